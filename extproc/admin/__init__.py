"""The admin HTTP port: health, metrics, virtual keys, provider health, the dashboard.

Owns the aiohttp routes served on the ext_proc's admin port and their auth. Reads
and changes state only through the store and the shared phase context; never on the
request path, never imported by the phases or the transport.
"""
