"""The llmux configuration: YAML -> typed, frozen structs, with every error at once.

Owns the config schema, `${VAR}` expansion and the CPU count behind `workers: 0`.
Pure values after loading: no network, no Redis, nothing of the request path, and
imports nothing of ours but itself.
"""
