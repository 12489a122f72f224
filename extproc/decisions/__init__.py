"""Pure decisions over values: routing, cache keys and replay, usage, keys, providers, prices.

Owns what the gateway decides: which targets may serve, which of them goes first
(a model's strategy), what a provider's rate-limit headers say, which credential, what a
cache entry is keyed by, how tokens are counted, how a provider is addressed, what a
request costs. No I/O
(no Redis, HTTP, gRPC, sockets or asyncio; an import-linter contract checks it): the
store's readings come in as values, and clocks and RNGs are passed in.
"""
