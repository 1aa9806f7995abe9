"""Every tunable of the pipeline, read from the environment in one place.

Each setting has a default that suits a single machine; production overrides
them through the environment (see README, "Settings").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use."""


def _env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)  # type: ignore[arg-type]
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _share(name: str, default: float) -> float:
    value = _float(name, default)
    if value > 1:
        raise SettingsError(f"{name}: a share between 0 and 1 (0.95 for 95%), got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    kafka: str | None = None
    clickhouse: str | None = None
    topic_prefix: str = "opscentre"
    pseudonym_key: str | None = None
    metrics_addr: str = "127.0.0.1:9108"
    partitions: int = 4
    consumer_group: str = "opscentre-worker"
    dedup_horizon_s: float = 600.0
    max_future_s: float = 600.0
    flush_interval_s: float = 1.0
    flush_max_records: int = 2000
    memory_window_hours: float = 3.0
    clickhouse_timeout_s: float = 30.0
    group_session_timeout_s: float = 10.0
    group_rebalance_timeout_s: float = 10.0
    group_heartbeat_s: float = 2.0
    provinces_file: str | None = None
    catalogue_file: str | None = None
    alert_lookahead_s: float = 3600.0
    idle_watermark_s: float = 10.0
    # Scorecard targets (shares, 0-1): on time per Nghị định 61/2018 practice and CONTRACT §2;
    # fully online 70% for provinces in 2025 (Quyết định 942); the others are the operator's.
    target_processing_on_time: float = 0.95
    target_on_time: float = 0.95
    target_full_online: float = 0.70
    target_online_payment: float = 0.50
    target_feedback_on_time: float = 0.90
    target_satisfied: float = 0.80
    data_dir: str = "./var"

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            kafka=_env("OPSCENTRE_KAFKA", None),
            clickhouse=_env("OPSCENTRE_CLICKHOUSE", None),
            topic_prefix=_env("OPSCENTRE_TOPIC_PREFIX", "opscentre"),  # type: ignore[arg-type]
            pseudonym_key=_env("OPSCENTRE_PSEUDONYM_KEY", None),
            metrics_addr=_env("OPSCENTRE_METRICS_ADDR", "127.0.0.1:9108"),  # type: ignore[arg-type]
            partitions=_int("OPSCENTRE_PARTITIONS", 4, minimum=1),
            consumer_group=_env("OPSCENTRE_CONSUMER_GROUP", "opscentre-worker"),  # type: ignore[arg-type]
            dedup_horizon_s=_float("OPSCENTRE_DEDUP_HORIZON_S", 600.0),
            max_future_s=_float("OPSCENTRE_MAX_FUTURE_S", 600.0),
            flush_interval_s=_float("OPSCENTRE_FLUSH_INTERVAL_S", 1.0, minimum=0.05),
            flush_max_records=_int("OPSCENTRE_FLUSH_MAX_RECORDS", 2000, minimum=1),
            memory_window_hours=_float("OPSCENTRE_MEMORY_WINDOW_HOURS", 3.0),
            clickhouse_timeout_s=_float("OPSCENTRE_CLICKHOUSE_TIMEOUT_S", 30.0, minimum=1.0),
            group_session_timeout_s=_float("OPSCENTRE_GROUP_SESSION_TIMEOUT_S", 10.0, minimum=1.0),
            group_rebalance_timeout_s=_float("OPSCENTRE_GROUP_REBALANCE_TIMEOUT_S", 10.0, minimum=1.0),
            group_heartbeat_s=_float("OPSCENTRE_GROUP_HEARTBEAT_S", 2.0, minimum=0.1),
            provinces_file=_env("OPSCENTRE_PROVINCES_FILE", None),
            catalogue_file=_env("OPSCENTRE_CATALOGUE_FILE", None),
            alert_lookahead_s=_float("OPSCENTRE_ALERT_LOOKAHEAD_S", 3600.0, minimum=60.0),
            idle_watermark_s=_float("OPSCENTRE_IDLE_WATERMARK_S", 10.0, minimum=1.0),
            target_processing_on_time=_share("OPSCENTRE_TARGET_PROCESSING_ON_TIME", 0.95),
            target_on_time=_share("OPSCENTRE_TARGET_ON_TIME", 0.95),
            target_full_online=_share("OPSCENTRE_TARGET_FULL_ONLINE", 0.70),
            target_online_payment=_share("OPSCENTRE_TARGET_ONLINE_PAYMENT", 0.50),
            target_feedback_on_time=_share("OPSCENTRE_TARGET_FEEDBACK_ON_TIME", 0.90),
            target_satisfied=_share("OPSCENTRE_TARGET_SATISFIED", 0.80),
            data_dir=_env("OPSCENTRE_DATA_DIR", "./var"),  # type: ignore[arg-type]
        )

    def with_overrides(self, **changes) -> "Settings":
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known})

    # Topic names are part of the public contract (CONTRACT §1).
    @property
    def service_topic(self) -> str:
        return f"{self.topic_prefix}.service-events"

    @property
    def security_topic(self) -> str:
        return f"{self.topic_prefix}.security-events"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letter"

    @property
    def alerts_topic(self) -> str:
        return f"{self.topic_prefix}.alerts"

    @property
    def event_topics(self) -> tuple[str, str]:
        return (self.service_topic, self.security_topic)

    def require_kafka(self) -> str:
        if not self.kafka:
            raise SettingsError("OPSCENTRE_KAFKA is not set (bootstrap servers host:port[,host:port])")
        return self.kafka

    def require_clickhouse(self) -> str:
        if not self.clickhouse:
            raise SettingsError(
                "OPSCENTRE_CLICKHOUSE is not set (clickhouse://user:password@host:9000/db or chdb:///path)"
            )
        return self.clickhouse

    def require_pseudonym_key(self) -> bytes:
        if not self.pseudonym_key:
            raise SettingsError("OPSCENTRE_PSEUDONYM_KEY is not set (secret used to pseudonymise personal identifiers)")
        return self.pseudonym_key.encode()

    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_addr.rpartition(":")
        try:
            return host or "127.0.0.1", int(port)
        except ValueError:
            raise SettingsError(f"OPSCENTRE_METRICS_ADDR: expected host:port, got {self.metrics_addr!r}") from None
