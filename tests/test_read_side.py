"""The lifecycle counts against the lifecycle views, on real servers.

Overdue open and open (carried over) at an instant are sums of transitions over a few buckets
(dashboards.kpi.lifecycle_count); the views `dossier_lifecycle` and `feedback_lifecycle` group
every stored event. On a stream with closings sent before their receipts, receipts hours late,
duplicates, a worker killed mid-stream and a replay of everything, both must give the same count,
per province and per agency, at many instants (minute-aligned and not).
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import subprocess
import sys
import time

import pytest

from dashboards.kpi import lifecycle_count
from opscentre.kafka import ensure_topics
from tests.test_exactly_once import send_in_background, settle, start_of_minute_ms
from tests.workload import Workload

pytestmark = pytest.mark.integration


def view_count(store, t_ms: int, interval: str, by_agency: bool) -> dict:
    kind, family = interval.split("_")
    view = "dossier_lifecycle" if kind == "dossiers" else "feedback_lifecycle"
    closed = ("(completed AND completed_ms < {t}) OR (cancelled AND cancelled_ms < {t})" if kind == "dossiers"
              else "(resolved AND resolved_ms < {t})").format(t=int(t_ms))
    start = "due_ms" if family == "overdue" else "received_ms"
    group = "province, agency" if by_agency else "province"
    rows = store.query(f"SELECT {group}, count() FROM {store.table(view)} WHERE received AND {start} < {int(t_ms)} "
                       f"AND NOT ({closed}) GROUP BY {group}")
    return {(tuple(row[:2]) if by_agency else row[0]): int(row[-1]) for row in rows}


def with_closings(events: list, rng: random.Random) -> list:
    """The events, and closings for a third of the items received and never closed: completed or
    cancelled (dossiers), resolved (feedback), in time, late, or dated before the receipt; a quarter
    of them filed by another agency (a one-stop centre reporting the result)."""
    item = lambda e: e.get("dossier_id") or e.get("feedback_id")  # noqa: E731
    closed = {item(e) for e in events if e["event_type"] in ("dossier.completed", "dossier.cancelled", "feedback.resolved")}
    extra = []
    for n, event in enumerate(events):
        if not event["event_type"].endswith(".received") or item(event) in closed or rng.random() > 0.35:
            continue
        received, due = _ms(event["occurred_at"]), _ms(event["due_at"])
        at = rng.choice([received + (due - received) // 2, due, due + 3_600_000, received - 60_000, received + 1])
        if at > time.time() * 1000 - 60_000:
            continue  # not in the future
        closing = {k: event[k] for k in ("province", "agency", "source")}
        closing.update(event_id=f"close-{n}", occurred_at=_iso(at))
        if rng.random() < 0.25:
            closing["agency"] = "TTPVHCC"
        if event["event_type"] == "feedback.received":
            closing.update(event_type="feedback.resolved", feedback_id=event["feedback_id"], due_at=event["due_at"],
                           satisfied=rng.random() < 0.7)
        elif rng.random() < 0.2:
            closing.update(event_type="dossier.cancelled", dossier_id=event["dossier_id"],
                           procedure_code=event["procedure_code"])
        else:
            closing.update(event_type="dossier.completed", dossier_id=event["dossier_id"],
                           procedure_code=event["procedure_code"], due_at=event["due_at"], result="approved")
        extra.append((at, closing))
    merged = [(_ms(e["occurred_at"]), n, e) for n, e in enumerate(events)]
    merged += [(at, len(events) + n, e) for n, (at, e) in enumerate(extra)]
    return [e for _, _, e in sorted(merged, key=lambda x: (x[0], x[1]))]


def _ms(value) -> int:
    return value if isinstance(value, int) else int(dt.datetime.fromisoformat(value).timestamp() * 1000)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone(dt.timedelta(hours=7))).isoformat(timespec="milliseconds")


def out_of_order(events: list, rng: random.Random) -> list:
    """The same events, a tenth of the receipts sent right after their item's first closing."""
    order, held = [], {}
    closing_types = {"dossier.completed", "dossier.cancelled", "feedback.resolved"}
    item = lambda e: e.get("dossier_id") or e.get("feedback_id")  # noqa: E731
    closed_items = {item(e) for e in events if e["event_type"] in closing_types}
    for event in events:
        if event["event_type"].endswith(".received") and item(event) in closed_items and rng.random() < 0.1:
            held[item(event)] = event
            continue
        order.append(event)
        if event["event_type"] in closing_types and item(event) in held:
            order.append(held.pop(item(event)))
    return order + list(held.values())


def test_lifecycle_counts_equal_the_views_across_a_kill_and_a_replay(pipeline):
    ensure_topics(pipeline.settings)
    rng = random.Random(5)
    start_ms = start_of_minute_ms(30)
    workload = Workload(seed=41, start_ms=start_ms, events=5000, rate=0.3)  # five hours of event time
    workload.valid = out_of_order(with_closings(workload.valid, rng), rng)
    late = out_of_order(with_closings(Workload(seed=42, start_ms=start_ms - 86_400_000, events=800, rate=0.3).valid,
                                      rng), rng)
    worker = pipeline.start_worker()
    sender = send_in_background(workload, pipeline.settings, seconds=10, with_bad=False)
    pipeline.wait_for(lambda: int(pipeline.store().query(
        f"SELECT count() FROM {pipeline.store().table('service_events')}")[0][0]) > 1500, what="worker under way")
    worker.stop(signal.SIGKILL)
    pipeline.start_worker()
    sender.join()
    workload.send(pipeline.settings, events=late, with_bad=False)  # a day late
    settle(pipeline, len(workload.unique_valid(late)))

    result = subprocess.run([sys.executable, "-m", "opscentre.cli", "replay", "--from-offsets", "earliest"],
                            env=pipeline.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    time.sleep(1)

    store = pipeline.store()
    times = [start_ms - 86_400_000 + int(i * 4.6 * 3_600_000) for i in range(8)]
    times += [start_ms + i * 1_661_987 for i in range(12)] + [start_ms + i * 2_040_000 for i in range(12)]
    times += [int(time.time() * 1000) + 86_400_000 * days for days in (1, 10, 45)]
    checked = 0
    for t_ms in times:
        for interval in ("dossiers_overdue", "dossiers_open", "feedback_overdue", "feedback_open"):
            for by_agency in (False, True):
                expected = view_count(store, t_ms, interval, by_agency)
                assert lifecycle_count(store, t_ms, interval, None, by_agency) == expected, (t_ms, interval, by_agency)
                checked += sum(expected.values())
    assert checked > 10_000  # the instants are not all empty
    # Drill-down: the items overdue now, per province and agency, as the view lists them; one item's history.
    from dashboards.drilldown import item_history, overdue_items

    now_ms = int(time.time() * 1000)
    for at_ms in (now_ms, now_ms + 45 * 86_400_000):  # later, every item still open is overdue
        listed = store.query(f"SELECT province, agency, dossier_id FROM {store.table('dossier_lifecycle')} "
                             f"WHERE received AND due_ms < {at_ms} AND NOT completed AND NOT cancelled")
        provinces = {province for province, _, _ in listed}
        assert len(provinces) > 3
        for province in provinces:
            got = overdue_items(store, at_ms, province, limit=100_000)
            assert sorted(item["item_id"] for item in got) == sorted(d for p, _, d in listed if p == province)
            assert [item["due_ms"] for item in got] == sorted(item["due_ms"] for item in got)
            for agency in {a for p, a, _ in listed if p == province}:  # closings filed by another agency among them
                assert sorted(i["item_id"] for i in overdue_items(store, at_ms, province, agency, limit=100_000)) == \
                    sorted(d for p, a, d in listed if p == province and a == agency), (province, agency)
    sent = [e for e in workload.unique_valid(late) if e.get("dossier_id") == listed[0][2]]
    history = item_history(store, listed[0][2])
    assert sorted((h["occurred_ms"], h["event_type"]) for h in history) == sorted(
        (_ms(e["occurred_at"]), e["event_type"]) for e in sent)
    assert [h["occurred_ms"] for h in history] == sorted(h["occurred_ms"] for h in history)

    # Closings of items received in the run were counted, in every order they came.
    edges = dict(store.query(f"SELECT family, count() FROM {store.table('lifecycle_edges')} FINAL "
                             "WHERE direction = 'left' GROUP BY family"))
    assert edges.get("open", 0) > 500 and edges.get("overdue", 0) > 30, edges


def test_a_database_from_before_the_counts_gets_them_from_its_events(clickhouse_url):
    """`opscentre db migrate` on a database whose events were stored before the lifecycle counts:
    streams.lifecycle.fill() computes them once, as the worker would have."""
    import json

    from opscentre.clickhouse import connect
    from opscentre.settings import Settings
    from sinks.clickhouse_sink import GRAINS, LIFECYCLE_MINUTE, ClickHouseSink, grain_table
    from sinks.schema import LIFECYCLE_SINCE, migrate
    from streams.lifecycle import fill
    from streams.processor import Processor

    store = connect(clickhouse_url)
    migrate(store)
    settings = Settings(topic_prefix="f")
    processor = Processor(settings, {settings.service_topic: "ts", settings.security_topic: "tz"}, ClickHouseSink(store),
                          b"k", ["%02d" % i for i in range(100)], clock=time.time)
    rng = random.Random(9)
    start_ms = start_of_minute_ms(30)
    events = [e for e in out_of_order(with_closings(Workload(seed=43, start_ms=start_ms, events=3000, rate=0.3).valid,
                                                    rng), rng) if e["event_type"] != "security.alert"]
    from opscentre.events import routing_key
    from opscentre.kafka import partition_for

    by_partition: dict = {}
    for event in events:  # one item's events in one partition, as producers key them
        by_partition.setdefault(partition_for(routing_key(event), 2), []).append(event)
    for partition, part in by_partition.items():
        for offset, start in enumerate(range(0, len(part), 25)):
            processor.process(settings.service_topic, partition, offset, int(time.time() * 1000) - 5000,
                              json.dumps(part[start:start + 25]).encode())
    processor.flush()
    times = [start_ms + i * 1_234_567 for i in range(16)]
    before = {t: lifecycle_count(store, t, "dossiers_overdue", None, True) for t in times}
    assert before == {t: view_count(store, t, "dossiers_overdue", True) for t in times}

    # As if stored by an earlier version: no edges, no counts, no marker.
    for table in ["lifecycle_edges", "open_items"] + [grain_table(LIFECYCLE_MINUTE, grain) for grain in GRAINS]:
        store.execute(f"TRUNCATE TABLE {store.table(table)}")
    store.execute(f"ALTER TABLE {store.table('schema_migrations')} DELETE WHERE version = {LIFECYCLE_SINCE}")
    time.sleep(1)
    assert lifecycle_count(store, times[-1], "dossiers_open", None) == {}
    migrate(store)
    assert fill(store) and not fill(store)
    for interval in ("dossiers_overdue", "dossiers_open", "feedback_overdue", "feedback_open"):
        for t in times:
            assert lifecycle_count(store, t, interval, None, True) == view_count(store, t, interval, True), (interval, t)


def test_a_database_from_before_the_time_keys_answers_the_same_and_is_rebuilt(pipeline):
    """Tables created before schema 9 have sorting keys without the leading time bucket (and
    open_items one for take-overs only): the readers' answers are the same on them. `opscentre db rekey` rebuilds them with the workers
    stopped; the answers stay, and a worker then writes on through the materialized views."""
    import re

    from opscentre.clickhouse import connect
    from sinks.schema import REKEYED, SORTING_KEYS_SINCE, applied_migrations, rollup_statements, statements, \
        tables_to_rekey
    from tests.test_pipeline import assert_kpis_match

    store = connect(pipeline.env["OPSCENTRE_CLICKHOUSE"])
    store.execute(f"CREATE DATABASE IF NOT EXISTS {store.database}")
    version = store.server_version()
    old_key = re.compile(r"ORDER BY \((?:toStartOf\w+\(\w+\)|intDiv\(at_ms, 3600000\)), ")
    for sql in statements(store.database, version) + rollup_statements(store.database, version):
        if any(f".{name} (" in sql for name in REKEYED):
            store.execute(old_key.sub("ORDER BY (", sql).replace(  # as schema 8 created them
                "ORDER BY (kind, closed, province, agency, item_id, source_offset)",
                "ORDER BY (topic_id, source_partition, kind, item_id, source_offset)").replace(
                "ORDER BY (kind, province, item_id, status)", "ORDER BY (kind, item_id, status)"))
    ensure_topics(pipeline.settings)
    rng = random.Random(7)
    start_ms = start_of_minute_ms(6)
    first = Workload(seed=44, start_ms=start_ms, events=2500, rate=0.4)
    first.valid = out_of_order(with_closings(first.valid, rng), rng)
    worker = pipeline.start_worker()
    first.send(pipeline.settings, with_bad=False)
    settle(pipeline, len(first.unique_valid()))
    worker.stop()
    assert sorted(tables_to_rekey(store)) == sorted(REKEYED)
    assert SORTING_KEYS_SINCE not in applied_migrations(store)
    spans = [(start_ms - 3_600_000, start_ms + 5_400_000), (start_ms + 90_500, start_ms + 250_250),
             (start_ms + 3_599_000, start_ms + 7_300_001), (start_ms - 86_400_000, int(time.time() * 1000))]
    assert_kpis_match(pipeline, first.unique_valid(), spans)
    times = [start_ms + i * 1_111_111 for i in range(20)]

    def counts():
        return {(t, interval): lifecycle_count(store, t, interval, None, True)
                for t in times for interval in ("dossiers_overdue", "dossiers_open", "feedback_overdue")}
    from dashboards.drilldown import overdue_items

    now_ms = int(time.time() * 1000)
    provinces = sorted({e["province"] for e in first.unique_valid()})

    def lists():
        return {p: overdue_items(store, now_ms, p) for p in provinces}
    before, listed = counts(), lists()
    assert sum(sum(c.values()) for c in before.values()) > 1000 and sum(map(len, listed.values())) > 50

    result = subprocess.run([sys.executable, "-m", "opscentre.cli", "db", "rekey"], env=pipeline.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{len(REKEYED)} tables rebuilt" in result.stdout, result.stdout
    assert tables_to_rekey(store) == [] and SORTING_KEYS_SINCE in applied_migrations(store)
    assert counts() == before and lists() == listed
    assert_kpis_match(pipeline, first.unique_valid(), spans)

    # The views write into the rebuilt tables: a second run's events reach every read.
    second = Workload(seed=45, start_ms=start_ms + 3 * 3_600_000, events=1500, rate=0.4)
    pipeline.start_worker()
    second.send(pipeline.settings, with_bad=False)
    everything = first.unique_valid() + second.unique_valid()
    settle(pipeline, len(everything))
    assert_kpis_match(pipeline, everything, spans + [(start_ms, int(time.time() * 1000))])
    for t in times + [int(time.time() * 1000)]:
        for interval in ("dossiers_overdue", "dossiers_open", "feedback_overdue"):
            assert lifecycle_count(store, t, interval, None, True) == view_count(store, t, interval, True)
    again = subprocess.run([sys.executable, "-m", "opscentre.cli", "db", "rekey"], env=pipeline.env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "every table has this version's sorting key already" in again.stdout, again
