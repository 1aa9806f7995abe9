"""Send events to Kafka as JSON-array batches, one batch per target partition.

Each event goes to the partition Kafka's default partitioner picks for its
routing key (CONTRACT §1), so a third-party producer sending the same event
alone, keyed the same way, lands on the same partition.
"""

from __future__ import annotations

import time

import msgspec
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter

from opscentre.events import routing_key, topic_kind
from opscentre.kafka import MAX_RECORD_BYTES, KafkaUnavailable, partition_count, partition_for
from opscentre.settings import Settings

EVENTS_SENT = Counter("opscentre_producer_events_total", "Events sent to Kafka", ["topic"])
RECORDS_SENT = Counter("opscentre_producer_records_total", "Kafka records sent", ["topic"])

_encode = msgspec.json.Encoder().encode


class BatchingProducer:
    def __init__(self, settings: Settings, max_events: int = 500, max_bytes: int = 512 * 1024,
                 linger_s: float = 0.2):
        bootstrap = settings.require_kafka()
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap.split(","),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_request_size=2 * MAX_RECORD_BYTES,
                batch_size=MAX_RECORD_BYTES,
                client_id="opscentre-producer",
            )
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka at {bootstrap} is not reachable: {exc}") from None
        self.topics = {"service": settings.service_topic, "security": settings.security_topic}
        self.partitions = {kind: partition_count(bootstrap, topic) for kind, topic in self.topics.items()}
        self.max_events = max_events
        self.max_bytes = min(max_bytes, MAX_RECORD_BYTES - 2)
        self.linger_s = linger_s
        self._buffers: dict[tuple[str, int], list] = {}
        self._sizes: dict[tuple[str, int], int] = {}
        self._opened: dict[tuple[str, int], float] = {}
        self.events_sent = 0

    def send(self, event: dict) -> None:
        """Queue one event (a dict following CONTRACT §1)."""
        event_type = event.get("event_type")
        kind = topic_kind(event_type) if isinstance(event_type, str) else "service"
        self.send_encoded(kind, routing_key(event), _encode(event))

    def send_encoded(self, kind: str, key: str | None, payload: bytes) -> None:
        partition = partition_for(key, self.partitions[kind]) if key else 0
        slot = (kind, partition)
        buffer = self._buffers.get(slot)
        if buffer is None:
            buffer = self._buffers[slot] = []
            self._sizes[slot] = 0
            self._opened[slot] = time.monotonic()
        if buffer and self._sizes[slot] + len(payload) + 1 > self.max_bytes:
            self._send_batch(slot)
            buffer = self._buffers[slot] = []
            self._opened[slot] = time.monotonic()
        buffer.append(payload)
        self._sizes[slot] += len(payload) + 1
        if len(buffer) >= self.max_events:
            self._send_batch(slot)

    def send_record(self, kind: str, payload: bytes, key: str | None = None) -> None:
        """Send one record as it is (used for lines that are not JSON: the worker rejects them)."""
        topic = self.topics[kind]
        self._producer.send(topic, value=payload, key=key.encode() if key else None)
        RECORDS_SENT.labels(topic).inc()

    def _send_batch(self, slot) -> None:
        buffer = self._buffers.pop(slot, None)
        self._sizes.pop(slot, None)
        self._opened.pop(slot, None)
        if not buffer:
            return
        kind, partition = slot
        topic = self.topics[kind]
        self._producer.send(topic, value=b"[" + b",".join(buffer) + b"]", partition=partition)
        RECORDS_SENT.labels(topic).inc()
        EVENTS_SENT.labels(topic).inc(len(buffer))
        self.events_sent += len(buffer)

    def poll(self) -> None:
        """Send batches that have waited longer than the linger time."""
        now = time.monotonic()
        for slot, opened in list(self._opened.items()):
            if now - opened >= self.linger_s:
                self._send_batch(slot)

    def flush(self, timeout_s: float = 60.0) -> None:
        for slot in list(self._buffers):
            self._send_batch(slot)
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self.flush()
        self._producer.close()
