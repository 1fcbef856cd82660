"""gRPC: wire codecs, the server runner and interceptors, clients of the three services."""
