"""Seeded event mixes for integration tests, and the KPIs they must produce.

The ground truth is computed here from the events the test itself decided are
valid and unique, with plain Python: it shares no code with the pipeline's
validator, aggregation or SQL.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time

from kafka import KafkaConsumer, KafkaProducer

from producers.simulator import Simulator


def _ms(value) -> int:
    if isinstance(value, int):
        return value
    return int(dt.datetime.fromisoformat(value).timestamp() * 1000)


def _key(event: dict) -> str:
    for field in ("dossier_id", "feedback_id", "document_id", "dst_asset"):
        if field in event:
            return event[field]
    return event["event_id"]


class Workload:
    """Valid events (unique by event_id) plus everything a producer may get wrong."""

    def __init__(self, seed: int, start_ms: int, events: int, rate: float = 10.0):
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        simulator = Simulator(seed, rate, start_ms, steady=True)  # the same shape at any hour
        self.valid = [simulator.next_event() for _ in range(events)]
        self.bad: list[tuple[bytes, str]] = []  # (original bytes, expected reason fragment)

    # -- sending ------------------------------------------------------------------------

    def send(self, settings, events=None, singles_share=0.1, duplicate_share=0.05, with_bad=True,
             seconds: float = 0.0) -> None:
        """Send `events` (default: all valid ones) as batches and single records, with duplicates and bad input."""
        from producers.batching import BatchingProducer

        events = self.valid if events is None else events
        rng = self.rng
        batcher = BatchingProducer(settings, max_events=50)
        single = KafkaProducer(bootstrap_servers=settings.kafka.split(","), acks="all")
        topics = {"service": settings.service_topic, "security": settings.security_topic}

        def send_single(event: dict, raw: bytes | None = None):
            kind = "security" if event.get("event_type", "").startswith("security.") else "service"
            single.send(topics[kind], key=_key(event).encode(), value=raw or json.dumps(event).encode())

        bad_items = self._bad_items(events) if with_bad else []
        started = time.monotonic()
        for position, event in enumerate(events):
            if seconds and position % 50 == 0:  # spread the stream over `seconds`
                batcher.flush()
                ahead = started + seconds * position / len(events) - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if rng.random() < singles_share:
                send_single(event)
            else:
                batcher.send(event)
                if rng.random() < duplicate_share / 3:
                    batcher.send(event)  # duplicate inside the same batch
            if rng.random() < duplicate_share:
                send_single(event)  # duplicate as a record of its own
            if bad_items and position % max(1, len(events) // len(bad_items)) == 0:
                item, reason, how = bad_items.pop()
                if how == "batch":
                    batcher.send(item)
                    self.bad.append((json.dumps(item).encode(), reason))
                else:
                    raw = item if isinstance(item, bytes) else json.dumps(item).encode()
                    single.send(topics["service"], value=raw)
                    self.bad.append((raw, reason))
        batcher.flush()
        batcher.close()
        single.flush()
        single.close()

    def _bad_items(self, events) -> list:
        base = dict(self.rng.choice([e for e in events if e["event_type"] == "dossier.received"]))
        now_ms = int(time.time() * 1000)
        items = []

        def variant(reason, how="batch", **changes):
            item = dict(base, event_id=f"bad-{len(items)}-{self.rng.randrange(10**6)}")
            for field, value in changes.items():
                if value is None:
                    item.pop(field, None)
                else:
                    item[field] = value
            items.append((item, reason, how))

        variant("field 'due_at'", due_at="31/12/2026")
        variant("field 'due_at': missing", due_at=None)
        variant("field 'province': unknown province code '99'", province="99")
        variant("field 'service_level'", service_level="fully_online")
        variant("field 'occurred_at'", how="single", occurred_at=now_ms + 86_400_000)
        variant("field 'event_type'", event_type="dossier.opened")
        variant("field 'agency'", how="single", agency=42)
        variant("field 'event_id'", event_id="has spaces")
        items.append((b"this is not json {", "record is not valid JSON", "single"))
        items.append((b"\xff\xfe\x00garbage", "not UTF-8", "single"))
        items.append((b'"just a string"', "record is a JSON string, not an event object", "single"))
        self.rng.shuffle(items)
        return items

    # -- ground truth ---------------------------------------------------------------------

    def unique_valid(self, extra=()) -> list:
        seen, unique = set(), []
        for event in list(self.valid) + list(extra):
            if event["event_id"] not in seen:
                seen.add(event["event_id"])
                unique.append(event)
        return unique


def truth(events, province: str, from_ms: int, to_ms: int) -> dict:
    """CONTRACT §2 for one province, from valid unique events (ignores from/to echo keys)."""
    counts = dict.fromkeys((
        "dossiers_received", "dossiers_received_full_online", "dossiers_received_partial_online",
        "dossiers_completed", "dossiers_completed_on_time", "dossiers_cancelled",
        "payments_total", "payments_online", "payments_online_vnd",
        "feedback_received", "feedback_resolved", "feedback_resolved_on_time", "feedback_satisfied",
        "documents_sent", "documents_received",
        "security_alerts", "security_alerts_high_or_critical", "security_alerts_blocked",
    ), 0)
    for e in events:
        if e["province"] != province or not from_ms <= _ms(e["occurred_at"]) < to_ms:
            continue
        kind = e["event_type"]
        if kind == "dossier.received":
            counts["dossiers_received"] += 1
            if e["service_level"] == "full_online":
                counts["dossiers_received_full_online"] += 1
            if e["service_level"] == "partial_online":
                counts["dossiers_received_partial_online"] += 1
        elif kind == "dossier.completed":
            counts["dossiers_completed"] += 1
            if _ms(e["occurred_at"]) <= _ms(e["due_at"]):
                counts["dossiers_completed_on_time"] += 1
        elif kind == "dossier.cancelled":
            counts["dossiers_cancelled"] += 1
        elif kind == "payment.completed":
            counts["payments_total"] += 1
            if e["method"] == "online":
                counts["payments_online"] += 1
                counts["payments_online_vnd"] += e["amount_vnd"]
        elif kind == "feedback.received":
            counts["feedback_received"] += 1
        elif kind == "feedback.resolved":
            counts["feedback_resolved"] += 1
            if _ms(e["occurred_at"]) <= _ms(e["due_at"]):
                counts["feedback_resolved_on_time"] += 1
            if e.get("satisfied"):
                counts["feedback_satisfied"] += 1
        elif kind == "document.exchanged":
            counts["documents_" + e["direction"]] += 1
        elif kind == "security.alert":
            n = e.get("count", 1)
            counts["security_alerts"] += n
            if e["severity"] >= 4:
                counts["security_alerts_high_or_critical"] += n
            if e["action"] == "blocked":
                counts["security_alerts_blocked"] += n

    received = {e["dossier_id"]: e for e in events if e["event_type"] == "dossier.received" and e["province"] == province}
    closed = {
        e["dossier_id"] for e in events
        if e["event_type"] in ("dossier.completed", "dossier.cancelled") and _ms(e["occurred_at"]) < to_ms
    }
    counts["dossiers_overdue_open"] = sum(
        1 for dossier, e in received.items() if dossier not in closed and _ms(e["due_at"]) < to_ms
    )

    def ratio(a, b):
        return None if not b else round(a / b, 4)

    counts["full_online_rate"] = ratio(counts["dossiers_received_full_online"], counts["dossiers_received"])
    counts["on_time_rate"] = ratio(counts["dossiers_completed_on_time"], counts["dossiers_completed"])
    counts["online_payment_rate"] = ratio(counts["payments_online"], counts["payments_total"])
    return counts


def provinces_seen(events, from_ms: int, to_ms: int) -> set:
    return {e["province"] for e in events if from_ms <= _ms(e["occurred_at"]) < to_ms}


def read_dead_letters(settings, expected: int, timeout_s: float = 60.0) -> list[dict]:
    consumer = KafkaConsumer(
        settings.dead_letter_topic, bootstrap_servers=settings.kafka.split(","),
        auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=1000,
    )
    letters = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for message in consumer:
                letters.append(json.loads(message.value))
            if len(letters) >= expected:
                # Give a straggler (an unexpected extra letter) a moment to show up.
                for message in consumer:
                    letters.append(json.loads(message.value))
                break
    finally:
        consumer.close()
    return letters
