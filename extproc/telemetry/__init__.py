"""Metrics, traces, the request log and the dashboard's activity.

Owns every metric and label name (typed `Metrics` methods), OpenTelemetry spans, the
`RequestRecord` each finished request logs, and the batched flush of those records
for the dashboard. Never fails or slows a request: a store error loses a batch.
"""
