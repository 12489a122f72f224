"""The ext_proc's gRPC transports: a lean HTTP/2 server (default) and grpcio (reference).

Both serve the same two methods over the same `Session`: Envoy's
`ExternalProcessor/Process` and `grpc.health.v1.Health/Check`. Owns framing, the
protobuf wire shape (envoy_msgs) and the per-stream exception guard; makes no
decisions, which belong to the phases.
"""
