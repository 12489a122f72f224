"""Running llmux: the `llmux` CLI, the ext_proc process, workers, children, hot reload.

Owns process wiring: load the config, build the store, context, transport and admin
port, start Envoy and Valkey for `llmux up`, supervise workers, apply reloads. The
top layer: anything may be imported here, nothing imports it.
"""
