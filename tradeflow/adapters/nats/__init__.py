"""The NATS (JetStream) event bus."""
