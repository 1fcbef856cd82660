"""Generated protobuf and gRPC modules: do not edit, run `make protos`."""
