"""Overdue alerts and the dossier lifecycle on real servers, against a ground truth.

The stream is the simulator's (same-day dossiers completed on time, late or
never) plus hand-made items: a completion sent before its dossier's receipt,
a receipt hours late, a completion and a payment for dossiers never received,
feedback resolved on time, late and never. A worker is killed mid-stream and
restarted. Then `opscentre replay` runs twice over the same database (no new
alert) and once into another database (the same alerts, marked replayed).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaConsumer

from opscentre.events import routing_key
from opscentre.kafka import ensure_topics, partition_for
from tests.test_exactly_once import (
    replay,
    send_in_background,
    settle,
    start_of_minute_ms,
)
from tests.test_pipeline import assert_kpis_match, stored_events
from tests.workload import Workload, _ms

pytestmark = pytest.mark.integration

VN = dt.timezone(dt.timedelta(hours=7))
MINUTE = 60_000


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, VN).isoformat(timespec="milliseconds")


def base(event_id: str, event_type: str, occurred_ms: int, **fields) -> dict:
    return {"event_id": event_id, "event_type": event_type, "occurred_at": iso(occurred_ms), "province": "01",
            "agency": "STP", "source": "test", **fields}


def received(name, occurred_ms, due_ms) -> dict:
    return base(f"r-{name}", "dossier.received", occurred_ms, dossier_id=name, procedure_code="1.004227",
                service_level="full_online", channel="online", due_at=iso(due_ms))


def completed(name, occurred_ms, due_ms) -> dict:
    return base(f"c-{name}", "dossier.completed", occurred_ms, dossier_id=name, procedure_code="1.004227",
                due_at=iso(due_ms), result="approved")


def feedback(name, occurred_ms, due_ms) -> dict:
    return base(f"f-{name}", "feedback.received", occurred_ms, feedback_id=name, channel="hotline_1022",
                due_at=iso(due_ms))


def resolved(name, occurred_ms, due_ms) -> dict:
    return base(f"fr-{name}", "feedback.resolved", occurred_ms, feedback_id=name, due_at=iso(due_ms), satisfied=True)


def expected_alerts(events, watermark_ms: int) -> set:
    """Items received and due before the final watermark with no closing at or before their due time."""
    opened, closings = {}, collections.defaultdict(list)
    for e in events:
        kind = "dossier" if e["event_type"].startswith("dossier.") else "feedback"
        item = e.get("dossier_id") or e.get("feedback_id")
        if e["event_type"] in ("dossier.received", "feedback.received"):
            opened[(kind, item)] = _ms(e["due_at"])
        elif e["event_type"] in ("dossier.completed", "dossier.cancelled", "feedback.resolved"):
            closings[(kind, item)].append(_ms(e["occurred_at"]))
    return {key for key, due in opened.items()
            if due < watermark_ms and not any(at <= due for at in closings.get(key, ()))}


def scorecard_truth(events, province: str, from_ms: int, to_ms: int) -> dict:
    """{agency (None: the province): counts} as the scorecard defines them, from the events."""
    rows = collections.defaultdict(lambda: dict.fromkeys(
        ("received", "carried_over", "completed", "completed_late", "overdue_open", "payments", "feedback_resolved"), 0))
    closed_at = collections.defaultdict(list)
    for e in events:
        if e["event_type"] in ("dossier.completed", "dossier.cancelled"):
            closed_at[e["dossier_id"]].append(_ms(e["occurred_at"]))
    for e in events:
        if e["province"] != province:
            continue
        at = _ms(e["occurred_at"])
        kind = e["event_type"]
        counts = [rows[None], rows[e["agency"]]]
        if kind == "dossier.received":
            closed = closed_at.get(e["dossier_id"], ())
            if at < from_ms and not any(c < from_ms for c in closed):
                for c in counts:
                    c["carried_over"] += 1
            if _ms(e["due_at"]) < to_ms and not any(c < to_ms for c in closed):
                for c in counts:
                    c["overdue_open"] += 1
        if not from_ms <= at < to_ms:
            continue
        key = {"dossier.received": "received", "dossier.completed": "completed", "payment.completed": "payments",
               "feedback.resolved": "feedback_resolved"}.get(kind)
        for c in counts if key else ():
            c[key] += 1
            if kind == "dossier.completed" and at > _ms(e["due_at"]):
                c["completed_late"] += 1
    return {agency: row for agency, row in rows.items() if any(row.values())}


def alerts_on_topic(settings, timeout_s: float = 3.0) -> list[dict]:
    consumer = KafkaConsumer(settings.alerts_topic, bootstrap_servers=settings.kafka.split(","),
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=int(timeout_s * 1000))
    try:
        return [json.loads(message.value) for message in consumer]
    finally:
        consumer.close()


def stored_alerts(pipeline, status: str = "firing") -> dict:
    store = pipeline.store()
    rows = store.query(f"SELECT kind, item_id, alert_id, due_ms, detected_ms, replayed, published "
                       f"FROM {store.table('alerts')} FINAL WHERE status = '{status}'")
    return {(kind, item): (alert_id, int(due), int(detected), int(replayed), int(published))
            for kind, item, alert_id, due, detected, replayed, published in rows}


def test_overdue_alerts_once_each_across_restart_and_replay(pipeline):
    settings = pipeline.settings
    ensure_topics(settings)
    start_ms = start_of_minute_ms(3)
    workload = Workload(seed=41, start_ms=start_ms, events=4000, rate=10.0)  # ~400 s of event time
    end_ms = start_ms + 400_000
    t = start_ms + 20_000
    handmade_first = [
        completed("HS-early-close", t + 30_000, t + 90_000),  # its receipt comes later: no alert
        completed("HS-never-received", t, t + MINUTE),  # counted, never tracked
        base("p-never", "payment.completed", t, dossier_id="HS-never-received-2", amount_vnd=50_000, method="online"),
        feedback("FB-open", t, t + MINUTE),  # never resolved: alert
        feedback("FB-on-time", t, t + MINUTE), resolved("FB-on-time", t + 30_000, t + MINUTE),
        feedback("FB-late", t, t + MINUTE), resolved("FB-late", t + 2 * MINUTE, t + MINUTE),  # resolved late: alert
    ]
    handmade_last = [
        received("HS-early-close", t, t + 90_000),
        received("HS-hours-late", start_ms - 5 * 3_600_000, start_ms - 4 * 3_600_000),  # alert on arrival
    ]
    # One event per partition well after the stream, so every partition's watermark passes every due time.
    ticks, covered, n = [], set(), 0
    while len(covered) < settings.partitions:
        event = base(f"tick-{n}", "document.exchanged", end_ms + 30 * MINUTE, document_id=f"VB-tick-{n}",
                     direction="sent")
        partition = partition_for(routing_key(event), settings.partitions)
        if partition not in covered:
            covered.add(partition)
            ticks.append(event)
        n += 1

    workload.valid = handmade_first + workload.valid + handmade_last + ticks
    worker = pipeline.start_worker()
    sender = send_in_background(workload, settings, seconds=14, with_bad=False)
    pipeline.wait_for(lambda: stored_events(pipeline) > 1200, what="worker under way")
    worker.stop(signal.SIGKILL)
    pipeline.start_worker()
    sender.join()
    events = workload.unique_valid()
    settle(pipeline, len(events))

    want = expected_alerts(events, end_ms + 30 * MINUTE)
    assert ("dossier", "HS-hours-late") in want and ("feedback", "FB-late") in want
    assert ("dossier", "HS-early-close") not in want and ("feedback", "FB-on-time") not in want
    assert len(want) > 20
    pipeline.wait_for(lambda: len(stored_alerts(pipeline)) >= len(want), what="alerts stored", timeout_s=60)
    time.sleep(3)  # a duplicate or an extra alert would land now
    stored = stored_alerts(pipeline)
    assert set(stored) == want
    for alert_id, due, detected, replayed, published in stored.values():
        assert detected > due and replayed == 0
    pipeline.wait_for(lambda: all(v[4] for v in stored_alerts(pipeline).values()), what="alerts marked published")

    # An alerted item closed later is resolved, once: a resolution follows its alert on the topic.
    closings = {("dossier" if e["event_type"].startswith("dossier") else "feedback", e.get("dossier_id") or e["feedback_id"])
                for e in events if e["event_type"] in ("dossier.completed", "dossier.cancelled", "feedback.resolved")}
    want_resolved = want & closings
    assert ("feedback", "FB-late") in want_resolved
    pipeline.wait_for(lambda: set(stored_alerts(pipeline, "resolved")) == want_resolved
                      and all(v[4] for v in stored_alerts(pipeline, "resolved").values()), what="resolutions published")
    on_topic = alerts_on_topic(settings)
    counts = collections.Counter((a["alert_id"], a["status"]) for a in on_topic)
    assert {alert for alert, status in counts if status == "firing"} == {v[0] for v in stored.values()}
    assert {alert for alert, status in counts if status == "resolved"} == {
        v[0] for k, v in stored.items() if k in want_resolved}
    assert max(counts.values()) == 1, [a for a, c in counts.items() if c > 1]
    order = {(a["alert_id"], a["status"]): n for n, a in enumerate(on_topic)}
    assert all(order[(alert, "firing")] < n for (alert, status), n in order.items() if status == "resolved")
    sample = on_topic[0]
    assert set(sample) >= {"type", "province", "agency", "procedure_code", "item_ref", "due_at", "detected_at"}
    assert "HS-" not in json.dumps(on_topic) and "FB-" not in json.dumps(on_topic)  # ids only as keyed hashes

    # The lifecycle is queryable, whatever the order the events came in.
    store = pipeline.store()
    lifecycle = store.query(f"SELECT received, completed, completed_on_time FROM {store.table('dossier_lifecycle')} "
                            f"WHERE dossier_id = 'HS-early-close'")
    assert [tuple(int(v) for v in row) for row in lifecycle] == [(1, 1, 1)]
    assert_kpis_match(pipeline, events, [(start_ms - 6 * 3_600_000, end_ms + 3_600_000), (start_ms, t + 45_000)])

    # The scorecard of a province over part of the stream: dossiers carried over from before it.
    for province in ("01", "79"):
        from_ms, to_ms = start_ms + 100_000, start_ms + 250_000
        result = subprocess.run(
            [sys.executable, "-m", "opscentre.cli", "scorecard", "--province", province, "--from", iso(from_ms),
             "--to", iso(to_ms), "--json"], env=pipeline.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        got = {row["agency"]: row["counts"] for row in rows}
        expected = scorecard_truth(events, province, from_ms, to_ms)
        assert got == expected
        top = rows[0]
        c = top["counts"]
        on_time = top["indicators"]["processing_on_time"]
        assert c["carried_over"] > 0 and on_time["target"] == 0.95
        assert on_time["value"] == round(1 - (c["completed_late"] + c["overdue_open"]) / (c["received"] + c["carried_over"]), 4)
        assert on_time["met"] == (on_time["value"] >= 0.95)
    pipeline.stop_all()

    # Replaying the same offsets raises nothing new; into another database, the same alerts, marked.
    replay(pipeline, "--from-offsets", "earliest")
    replay(pipeline, "--from-offsets", "earliest")
    assert stored_alerts(pipeline) == stored
    assert len(alerts_on_topic(settings)) == len(on_topic)
    replay(pipeline, "--from-offsets", "earliest", "--into", pipeline.store().database + "_copy")
    pipeline.use_clickhouse(pipeline.env["OPSCENTRE_CLICKHOUSE"] + "_copy")
    copied = stored_alerts(pipeline)
    assert set(copied) == want
    assert all(v[3] == 1 for v in copied.values())
    replayed = [a for a in alerts_on_topic(settings) if a["replayed"]]
    assert len([a for a in replayed if a["status"] == "firing"]) == len(want)
    assert len([a for a in replayed if a["status"] == "resolved"]) == len(want_resolved)
