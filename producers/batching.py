"""Send events to Kafka as JSON-array batches, one batch per target partition.

Each event goes to the partition Kafka's default partitioner picks for its
routing key (CONTRACT §1), so a third-party producer sending the same event
alone, keyed the same way, lands on the same partition.
"""

from __future__ import annotations

import logging
import time

import msgspec
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter

from opscentre.events import routing_key, topic_kind
from opscentre.kafka import MAX_RECORD_BYTES, KafkaUnavailable, partition_count, partition_for
from opscentre.settings import Settings

log = logging.getLogger(__name__)

EVENTS_SENT = Counter("opscentre_producer_events_total", "Events sent to Kafka", ["topic"])
RECORDS_SENT = Counter("opscentre_producer_records_total", "Kafka records sent", ["topic"])
EVENTS_FAILED = Counter(
    "opscentre_producer_failed_events_total", "Events Kafka did not take after the client's retries", ["topic"])

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
        # Set from the client's I/O thread when Kafka refuses a record for good; flush() reports it.
        self.events_failed = 0
        self.last_failure: Exception | None = None

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
        self._send(topic, payload, 1, key=key.encode() if key else None)

    def _send_batch(self, slot) -> None:
        buffer = self._buffers.pop(slot, None)
        self._sizes.pop(slot, None)
        self._opened.pop(slot, None)
        if not buffer:
            return
        kind, partition = slot
        topic = self.topics[kind]
        self._send(topic, b"[" + b",".join(buffer) + b"]", len(buffer), partition=partition)
        EVENTS_SENT.labels(topic).inc(len(buffer))
        self.events_sent += len(buffer)

    def _send(self, topic: str, value: bytes, events: int, key: bytes | None = None, partition: int | None = None):
        try:
            future = self._producer.send(topic, value=value, key=key, partition=partition)
        except KafkaError as exc:  # refused before sending (too large, no metadata in time)
            self._failed(topic, events, exc)
            return
        future.add_errback(self._failed, topic, events)
        RECORDS_SENT.labels(topic).inc()

    def _failed(self, topic: str, events: int, exc: Exception) -> None:
        if not self.events_failed:
            log.error("Kafka refused a record of %d events for %s: %s", events, topic, exc)
        EVENTS_FAILED.labels(topic).inc(events)
        self.events_failed += events
        self.last_failure = exc

    def poll(self) -> None:
        """Send batches that have waited longer than the linger time."""
        now = time.monotonic()
        for slot, opened in list(self._opened.items()):
            if now - opened >= self.linger_s:
                self._send_batch(slot)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Send what is buffered and wait until Kafka has it. Raises KafkaUnavailable if it was not
        all taken: events are never lost silently."""
        for slot in list(self._buffers):
            self._send_batch(slot)
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka did not take the events sent within {timeout_s:g} s: {exc}") from None
        if self.events_failed:
            failed, self.events_failed = self.events_failed, 0
            raise KafkaUnavailable(
                f"{failed} events were not delivered to Kafka ({self.last_failure}); sending the input again "
                "within the de-duplication horizon (OPSCENTRE_DEDUP_HORIZON_S) counts none of it twice")

    def close(self, timeout_s: float = 60.0) -> None:
        try:
            self.flush(timeout_s)
        finally:
            try:
                self._producer.close(timeout=1)
            except KafkaError:
                # kafka-python's close flushes first and cannot give up on pending records; flush has
                # waited for them and reported them. Stop its I/O thread without them.
                self._producer._sender.force_close()
                self._producer._sender.join(5)
