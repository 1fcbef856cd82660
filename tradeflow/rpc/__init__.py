"""gRPC plumbing shared by the three services and their clients: error mapping,
interceptors, the server runner, client calls."""
