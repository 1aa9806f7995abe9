"""Hour, day and month rows: sums of the minute rows, on ClickHouse 18.16 and chDB; periods as the
fewest whole buckets."""

from __future__ import annotations

import datetime
import json
import random
import subprocess
import sys

import pytest

from dashboards.kpi import whole_buckets
from opscentre.clickhouse import connect
from sinks.clickhouse_sink import GRAINS, SECURITY_MINUTE, SERVICE_MINUTE, ClickHouseSink, Derived, grain_table
from sinks.schema import migrate


def test_a_period_is_the_fewest_whole_buckets():
    rnd = random.Random(3)
    for _ in range(5000):
        start = rnd.randrange(1_700_000_000, 1_800_000_000) // 60 * 60
        end = start + 60 * rnd.choice([1, 59, 60, 61, 1440, 1441, 44_640, 600_000, rnd.randrange(1, 10**6)])
        buckets = whole_buckets(start, end)
        assert buckets[0][1] == start and buckets[-1][2] == end
        for (_, _, first_end), (_, second_start, _) in zip(buckets, buckets[1:]):
            assert first_end == second_start
        for grain, a, b in buckets:
            assert grain.bucket(a) == a and grain.bucket(b) == b and a < b
        # No two neighbouring buckets of a grain that a coarser one could replace.
        names = [grain.name for grain, _, _ in buckets]
        assert names.count("month") <= 1
    assert [g.name for g, _, _ in whole_buckets(1_764_547_200, 1_796_083_200)] == ["month"]  # 2025-12 .. 2026-12


def _fill(store, tmp_minutes=3000):
    from opscentre.settings import Settings
    from producers.simulator import Simulator
    from streams.processor import Processor

    migrate(store)
    settings = Settings(topic_prefix="r")
    processor = Processor(settings, {settings.service_topic: "ts", settings.security_topic: "tz"},
                          ClickHouseSink(store), b"k", ["%02d" % i for i in range(100)],
                          clock=lambda: 1_795_000_000.0)
    simulator = Simulator(4, 0.05, 1_790_000_000_000, steady=True)  # ~2 months of event time
    events = [simulator.next_event() for _ in range(tmp_minutes)]
    offsets = {}
    for start in range(0, len(events), 40):
        chunk = events[start:start + 40]
        for topic, kind in ((settings.service_topic, False), (settings.security_topic, True)):
            part = [e for e in chunk if (e["event_type"] == "security.alert") == kind]
            if part:
                partition = (start // 40) % 3
                offset = offsets.get((topic, partition), 0)
                offsets[(topic, partition)] = offset + 1
                processor.process(topic, partition, offset, 1_794_999_000_000, json.dumps(part).encode())
        if start % 400 == 0:
            processor.flush()
    processor.flush()


def _check_sums(store) -> None:
    from sinks.clickhouse_sink import LIFECYCLE_MINUTE

    for table in (SERVICE_MINUTE, SECURITY_MINUTE, LIFECYCLE_MINUTE):
        counters = ", ".join(f"sum({name})" for name in table.counters)
        totals = [store.query(f"SELECT count(), {counters} FROM {store.table(grain_table(table, grain))} FINAL")[0]
                  for grain in GRAINS]
        assert totals[0][0] > totals[-1][0] > 0
        assert len({tuple(int(v) for v in row[1:]) for row in totals}) == 1, totals
        # Per bucket too: the day rows are the sums of the minute rows of each day.
        dims = ", ".join(table.dimensions)
        by_day = lambda source: store.query(  # noqa: E731
            f"SELECT intDiv(toUInt32(window_start), 86400) AS d, {dims}, topic_id, source_partition, {counters} "
            f"FROM {store.table(source)} FINAL GROUP BY d, {dims}, topic_id, source_partition ORDER BY d, {dims}, "
            f"topic_id, source_partition")
        assert by_day(table.name) == by_day(grain_table(table, GRAINS[2]))


@pytest.mark.integration
def test_rollups_are_the_sums_of_minute_rows_on_clickhouse_18(clickhouse_url):
    store = connect(clickhouse_url)
    _fill(store)
    _check_sums(store)


def test_rollups_are_the_sums_of_minute_rows_on_chdb(tmp_path):
    # chDB allows one path per process: the check runs in a child process.
    code = (
        "import sys; sys.path.insert(0, '.');"
        "from opscentre.clickhouse import connect; from tests.test_rollups import _fill, _check_sums;"
        f"s = connect('chdb://{tmp_path}/ch'); _fill(s); _check_sums(s)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _fill_sparse(store, minutes=20_000):
    """One write touching `minutes` distinct minutes: a backfill of sparse history."""
    from opscentre.settings import Settings
    from streams.processor import Processor

    migrate(store)
    settings = Settings(topic_prefix="r")
    processor = Processor(settings, {settings.service_topic: "ts", settings.security_topic: "tz"},
                          ClickHouseSink(store), b"k", ["%02d" % i for i in range(100)],
                          clock=lambda: 1_795_000_000.0)
    start_ms = 1_790_000_000_000 // 60_000 * 60_000
    events = [{"event_id": f"sparse-{i}", "event_type": "dossier.received", "occurred_at": start_ms + i * 60_000,
               "province": "01", "agency": "SYT", "source": "dvc-01", "dossier_id": f"HS-{i}",
               "procedure_code": "1.001613", "service_level": "full_online", "channel": "online",
               "due_at": start_ms + i * 60_000 + 3_600_000} for i in range(minutes)]
    for offset, first in enumerate(range(0, minutes, 2_000)):
        processor.process(settings.service_topic, 0, offset, 1_794_999_000_000, json.dumps(events[first:first + 2_000]).encode())
    processor.flush()
    return minutes


def _check_sparse(store, minutes) -> None:
    for grain in GRAINS:
        rows, received = store.query(
            f"SELECT count(), sum(dossiers_received) FROM {store.table(grain_table(SERVICE_MINUTE, grain))} FINAL")[0]
        assert int(received) == minutes, (grain.name, rows, received)
        entered = store.query(f"SELECT sum(dossiers_open_entered) FROM {store.table('lifecycle_' + grain.name)} FINAL")[0][0]
        assert int(entered) == minutes, (grain.name, entered)


@pytest.mark.integration
def test_a_write_touching_twenty_thousand_minutes_fits_the_query_size_of_clickhouse_18(clickhouse_url):
    # Each recompute lists the minutes it touches: 20,000 of them once made a statement over
    # 18.16's 256 KiB max_query_size, and the worker retried that write forever.
    store = connect(clickhouse_url)
    _check_sparse(store, _fill_sparse(store))


def _fill_with_redelivery(store, events=2400, per_record=8, died_mid_write=False):
    """Records through one processor, then a second one resuming 40% earlier (a worker that died
    after storing records it had not committed): their transitions come twice. `died_mid_write`:
    the first one's last snapshot stored its raw events (and so their transitions) only."""
    from opscentre.settings import Settings
    from producers.simulator import Simulator
    from streams.processor import Processor

    migrate(store)
    # No memory window: on the take-over only rows stored past the resumed offset and the latest
    # stored minute's are loaded, and the rest is read back row by row.
    settings = Settings(topic_prefix="r", memory_window_s=0)
    simulator = Simulator(6, 0.5, 1_790_000_000_000, steady=True)
    drawn = [simulator.next_event() for _ in range(events * 2)]
    service = [e for e in drawn if e["event_type"] != "security.alert"][:events]
    for late in range(3, len(service), 7 * per_record):  # a record in seven two hours late, due times too
        for event in service[late:late + per_record]:
            for field in ("occurred_at", "due_at"):
                if field in event:
                    moment = datetime.datetime.fromisoformat(event[field]) - datetime.timedelta(hours=2)
                    event[field] = moment.isoformat(timespec="milliseconds")
    records = [json.dumps(service[i:i + per_record]).encode() for i in range(0, len(service), per_record)]

    def run(first: int, last: int, died_mid_write: bool = False) -> None:
        processor = Processor(settings, {settings.service_topic: "ts", settings.security_topic: "tz"},
                              ClickHouseSink(store), b"k", ["%02d" % i for i in range(100)],
                              clock=lambda: 1_795_000_000.0)
        for offset in range(first, last):
            processor.process(settings.service_topic, offset % 2, offset // 2, 1_794_999_000_000 + offset,
                              records[offset])
            if offset % 13 == 0 and offset < last - 40:
                processor.flush()
        if not died_mid_write:
            processor.flush()
            return
        for table, names, columns, _ in processor.prepare().batch.inserts():
            if table == "service_events":
                store.insert(table, list(names), columns)

    run(0, len(records), died_mid_write)
    run(int(len(records) * 0.6) // 2 * 2, len(records))


def _check_lifecycle_is_the_edges(store) -> None:
    """Every lifecycle row of every grain is the sum of its stored transitions (lifecycle_edges)."""
    from sinks.clickhouse_sink import LIFECYCLE_MINUTE

    sums = ", ".join(
        f"sumIf(weight, kind = '{kind}' AND family = '{family}' AND direction = '{direction}')"
        for kind in ("dossier", "feedback") for family in ("open", "overdue") for direction in ("entered", "left"))
    minutes = {}
    for row in store.query(
            f"SELECT intDiv(intDiv(at_ms, 1000), 60) * 60 AS m, province, agency, procedure_code, topic_id, "
            f"source_partition, {sums} FROM {store.table('lifecycle_edges')} FINAL "
            f"GROUP BY m, province, agency, procedure_code, topic_id, source_partition"):
        minutes[(int(row[0]), *row[1:6])] = [int(v) for v in row[6:]]
    assert sum(counts[0] for counts in minutes.values()) > 100  # dossiers received
    for grain in GRAINS:
        expected = {}
        for key, counts in minutes.items():
            slot = (grain.bucket(key[0]), *key[1:])
            expected[slot] = [a + b for a, b in zip(expected.get(slot, [0] * len(counts)), counts)]
        counters = ", ".join(LIFECYCLE_MINUTE.counters)
        actual = {(int(row[0]), *row[1:6]): [int(v) for v in row[6:]] for row in store.query(
            f"SELECT toUInt32(window_start), province, agency, procedure_code, topic_id, source_partition, {counters} "
            f"FROM {store.table(grain_table(LIFECYCLE_MINUTE, grain))} FINAL")}
        nonzero = lambda rows: {k: v for k, v in rows.items() if any(v)}  # noqa: E731
        assert nonzero(actual) == nonzero(expected), grain.name


@pytest.mark.integration
@pytest.mark.parametrize("died_mid_write", [False, True], ids=["redelivery", "died mid-write"])
def test_lifecycle_rows_are_the_sums_of_their_edges_after_a_redelivery(clickhouse_url, died_mid_write):
    store = connect(clickhouse_url)
    _fill_with_redelivery(store, died_mid_write=died_mid_write)
    _check_lifecycle_is_the_edges(store)


@pytest.mark.integration
def test_lifecycle_rows_stay_exact_when_a_pass_fails_half_way_or_is_done_twice(clickhouse_url):
    from opscentre.clickhouse import StoreUnavailable
    from opscentre.settings import Settings
    from producers.simulator import Simulator
    from streams.processor import Processor

    store = connect(clickhouse_url)
    migrate(store)
    settings = Settings(topic_prefix="r")
    sink = ClickHouseSink(store)
    processor = Processor(settings, {settings.service_topic: "ts", settings.security_topic: "tz"}, sink, b"k",
                          ["%02d" % i for i in range(100)], clock=lambda: 1_795_000_000.0)
    simulator = Simulator(7, 0.5, 1_790_000_000_000, steady=True)
    service = [e for e in (simulator.next_event() for _ in range(3000)) if e["event_type"] != "security.alert"]
    for offset, first in enumerate(range(0, len(service), 10)):
        processor.process(settings.service_topic, 0, offset, 1_794_999_000_000, json.dumps(service[first:first + 10]).encode())
        if offset % 20 != 19:
            continue
        snapshot = processor.prepare()
        sink.store_rows(snapshot.batch)
        derived = Derived.of(snapshot.batch)
        insert, failed = store.insert, []

        def insert_failing_once(table, *args, **kwargs):
            if table == "lifecycle_day" and not failed:
                failed.append(table)
                raise StoreUnavailable("down")
            return insert(table, *args, **kwargs)

        store.insert = insert_failing_once
        with pytest.raises(StoreUnavailable):
            sink.derive_rows(derived)  # some rollups written, lifecycle_day not
        store.insert = insert
        sink.derive_rows(derived)  # the retry
        sink.derive_rows(derived)  # the same pass again
        processor.commit(snapshot)
    processor.flush()
    _check_lifecycle_is_the_edges(store)
