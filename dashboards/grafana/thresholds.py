"""The numbers the boards colour by, each with the reason it is that number.

Kept in one place so the alert rules written beside the boards can read the same values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pipeline:
    # An overdue alert must reach the alerts topic within 60 s of its due time
    # (tests/test_live_alerts.py): a worker 60 s behind its partitions is already late.
    lag_seconds_warning: float = 10.0
    lag_seconds_critical: float = 60.0
    # Records are stored about once a second (OPSCENTRE_FLUSH_INTERVAL_S): seconds are normal,
    # a minute means rows wait on ClickHouse.
    end_to_end_seconds_warning: float = 5.0
    end_to_end_seconds_critical: float = 60.0
    insert_seconds_warning: float = 1.0
    insert_seconds_critical: float = 5.0
    # A quiet partition's watermark follows the wall clock less OPSCENTRE_IDLE_WATERMARK_S (10 s).
    watermark_delay_seconds_warning: float = 30.0
    watermark_delay_seconds_critical: float = 60.0
    # Share of input dead-lettered: a source system sending bad data shows here first.
    rejected_share_warning: float = 0.01
    rejected_share_critical: float = 0.05


PIPELINE = Pipeline()


@dataclass(frozen=True)
class Business:
    # A share this close below its target is orange (a bad week, not yet a trend); further, red.
    near_target: float = 0.05
    # Dossiers overdue right now: any is one too many (orange); a hundred is a desk that stopped.
    overdue_open_warning: float = 1
    overdue_open_critical: float = 100
    # High/critical security alerts in the last hour: one is worth a look, ten an incident.
    security_high_warning: float = 1
    security_high_critical: float = 10
    # Hours a dossier has been overdue: past a day it is a complaint.
    hours_overdue_critical: float = 24


BUSINESS = Business()
