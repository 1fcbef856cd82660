"""The application: settings, the composition root (embedded | remote), CLI, devstack."""
