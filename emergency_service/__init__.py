"""The emergency service: halts, risk limits and their audit trail in Redis, over gRPC.

Run it with ``python -m emergency_service``; executors in other processes use
:class:`tradeflow.adapters.grpc.emergency_client.RemoteEmergencyControl`, which keeps a
local, push-updated view of the halts.
"""

__all__: list[str] = []
