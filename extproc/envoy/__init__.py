"""Envoy's side: the bootstrap, its local replies, the xDS files, and the shared names.

Owns what Envoy is told: listeners, model clusters and routes, the two ext_proc
filters, error replies in the client's dialect, and publishing model resources on a
reload. `contract` holds the header, metadata and cluster names both Envoy's config
and the ext_proc use. Builds plain dicts; knows nothing of protobuf or the phases.
"""
