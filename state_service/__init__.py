"""The state service: executions, checkpoints and event history in Redis, over gRPC.

Run it with ``python -m state_service``; talk to it with
:class:`tradeflow.adapters.grpc.state_client.StateClient`.
"""
