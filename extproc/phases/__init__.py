"""The ext_proc's per-request logic: the router phase and the upstream (per-attempt) phase.

Owns what happens to one request: authenticate, route, cache, translate bodies
between the client's dialect and the provider's, meter, and answer in neutral
actions (`Continue`, `Respond`). Knows nothing of protobuf, gRPC or how messages
travel (that is `transport`); keeps no per-request state in process memory.
"""
