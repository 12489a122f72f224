"""The only Redis client: key names, Lua scripts, and the errors mapped to StoreError.

Owns the shared state every replica agrees on: quota windows, cooldowns, circuit
breakers, virtual keys, usage, cache entries, dashboard activity. Decides nothing;
callers choose fail-open or fail-closed on a StoreError.
"""
