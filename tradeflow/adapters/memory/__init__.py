"""In-process adapters: event bus, paper exchange, replayed prices."""
