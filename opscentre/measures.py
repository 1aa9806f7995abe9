"""Names of the per-minute counters: produced by streams, stored by sinks, read by dashboards.

They mirror CONTRACT §2; a counter's position in these tuples is its index in
the stream processor's row state.
"""

SERVICE_COUNTERS = (
    "events",
    "dossiers_received",
    "dossiers_received_full_online",
    "dossiers_received_partial_online",
    "dossiers_completed",
    "dossiers_completed_on_time",
    "dossiers_cancelled",
    "payments_total",
    "payments_online",
    "payments_vnd",
    "payments_online_vnd",
    "feedback_received",
    "feedback_resolved",
    "feedback_resolved_on_time",
    "feedback_satisfied",
    "documents_sent",
    "documents_received",
)

# Dimensions of a service row besides the window and the source partition.
SERVICE_DIMENSIONS = ("province", "agency")

SECURITY_COUNTERS = ("events", "alerts")
SECURITY_DIMENSIONS = ("province", "category", "severity", "action", "sensor", "technique")

# Upper bounds (s) of opscentre_stream_end_to_end_seconds: the worker's histogram, and the latency
# objective of the alerting rules, which must be one of them (dashboards/config.py).
END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300)

# Transitions of items' intervals (streams.lifecycle): open on (received, closed], overdue on
# (due, closed]. A count at t is the sum of entered - left over the buckets before t.
LIFECYCLE_COUNTERS = tuple(
    f"{kind}_{interval}_{direction}"
    for kind in ("dossiers", "feedback") for interval in ("open", "overdue") for direction in ("entered", "left")
)
LIFECYCLE_DIMENSIONS = ("province", "agency", "procedure_code")
