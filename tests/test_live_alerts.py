"""Overdue alerts in real time: within 60 s of a due time passing, on a busy and on a quiet partition."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from opscentre.events import routing_key
from opscentre.kafka import ensure_topics, partition_for

pytestmark = pytest.mark.integration

VN = dt.timezone(dt.timedelta(hours=7))


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, VN).isoformat(timespec="milliseconds")


def event(event_id: str, event_type: str, occurred_ms: int, **fields) -> dict:
    return {"event_id": event_id, "event_type": event_type, "occurred_at": iso(occurred_ms), "province": "48",
            "agency": "UBND-XA", "source": "test", **fields}


def received(dossier: str, now_ms: int, due_ms: int) -> dict:
    return event(f"r-{dossier}", "dossier.received", now_ms, dossier_id=dossier, procedure_code="2.000815",
                 service_level="full_online", channel="online", due_at=iso(due_ms))


def on_partition(make, partition: int, partitions: int, start: int = 0) -> dict:
    """The first event make(n) built for n = start, start + 1, ... that routes to `partition`."""
    n = start
    while partition_for(routing_key(made := make(n)), partitions) != partition:
        n += 1
    return made


def test_overdue_alert_within_a_minute_on_busy_and_quiet_partitions(pipeline):
    settings = pipeline.settings
    ensure_topics(settings)
    n = settings.partitions
    pipeline.start_worker()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.split(","), acks="all")

    def send(e: dict) -> None:
        producer.send(settings.service_topic, key=routing_key(e).encode(), value=json.dumps(e).encode(),
                      partition=partition_for(routing_key(e), n))

    now = int(time.time() * 1000)
    due = now + 20_000
    busy = on_partition(lambda i: received(f"HS-busy-{i}", now, due), 0, n)
    quiet = on_partition(lambda i: received(f"HS-quiet-{i}", now, due), 1, n)
    done = on_partition(lambda i: received(f"HS-done-{i}", now, due), 1, n)
    for e in (busy, quiet, done):
        send(e)
    send(event("c-done", "dossier.completed", now + 5_000, dossier_id=done["dossier_id"], procedure_code="2.000815",
               due_at=iso(due), result="approved"))
    producer.flush()

    stop = threading.Event()

    def traffic():  # live documents on the busy partition only
        i = 0
        while not stop.wait(0.5):
            t = int(time.time() * 1000)
            e = on_partition(lambda k: event(f"d-{k}", "document.exchanged", t, document_id=f"VB-{k}",
                                             direction="sent"), 0, n, start=i)
            i = int(e["document_id"][3:]) + 1
            send(e)
            producer.flush()

    sender = threading.Thread(target=traffic)
    sender.start()
    consumer = KafkaConsumer(settings.alerts_topic, bootstrap_servers=settings.kafka.split(","),
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=1000)
    arrived = {}
    try:
        while time.time() * 1000 < due + 90_000 and len(arrived) < 2:
            for message in consumer:
                alert = json.loads(message.value)
                arrived[alert["source"]["partition"]] = (alert, int(time.time() * 1000))
        time.sleep(3)  # an alert for the completed dossier, or a second one, would arrive now
        for message in consumer:
            alert = json.loads(message.value)
            arrived.setdefault("extra", []).append(alert)
    finally:
        stop.set()
        sender.join()
        consumer.close()
        producer.close()

    assert set(arrived) == {0, 1}, arrived
    for partition, (alert, seen_ms) in arrived.items():
        assert alert["type"] == "dossier.overdue" and not alert["replayed"]
        assert alert["due_at"].startswith(dt.datetime.fromtimestamp(due / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
        detected = int(dt.datetime.fromisoformat(alert["detected_at"].replace("Z", "+00:00")).timestamp() * 1000)
        assert due < detected <= due + 60_000, (partition, detected - due)
        assert seen_ms - due <= 60_000, (partition, seen_ms - due)
        print(f"partition {partition}: detected {detected - due} ms after due, on the topic after {seen_ms - due} ms")
