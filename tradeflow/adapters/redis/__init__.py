"""Redis adapters behind the state and emergency services."""
