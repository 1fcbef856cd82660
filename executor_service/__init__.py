"""The executor service: runs workflows over gRPC (``python -m executor_service``)."""
