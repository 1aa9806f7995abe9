"""The processor's resume rules, with an in-memory stand-in for ClickHouse (unit level).

The same rules are exercised against the real servers in test_exactly_once.py.
"""

import json

import pytest

from opscentre.settings import Settings
from producers.simulator import Simulator
from sinks.clickhouse_sink import PartitionSnapshot
from sinks.schema import SEEN_COLUMNS, SEEN_VIEWS
from streams.processor import Processor

SETTINGS = Settings(topic_prefix="t")
TOPIC = SETTINGS.service_topic


class MemorySink:
    """Keeps the newest version of every minute row, like ReplacingMergeTree ... FINAL."""

    def __init__(self):
        self.rows = {}  # (table, topic_id, partition, key) -> (counters, version)
        self.seen = []  # (topic_id, partition, record_ms, offset, event_id)
        self.fail_next = False
        self.purges = []  # each purge round: its OpenItemsPurge per partition
        self.purge_results = []  # what the next rounds return, first first; then a complete round

    def write(self, batch):
        if self.fail_next:
            self.fail_next = False
            from opscentre.clickhouse import StoreUnavailable

            raise StoreUnavailable("down")
        from sinks.clickhouse_sink import ROLLUP_TABLES, _columns

        rollups = [(table, ROLLUP_TABLES[table].columns, _columns(rows, len(ROLLUP_TABLES[table].columns)), len(rows))
                   for table, rows in batch.rollups.items()]
        for table, names, columns, _ in batch.inserts() + rollups:
            if table in SEEN_VIEWS.values():  # the raw tables seen_event_ids is copied from
                self.seen += list(zip(*(columns[names.index(name)] for name in SEEN_COLUMNS)))
            if not table.endswith(("_minute", "_hour", "_day", "_month")):  # the minute rows and the rollups
                continue
            dims = names.index("topic_id") - 1
            for values in zip(*columns):
                row = dict(zip(names, values))
                key = tuple(values[:1 + dims])
                counters = list(values[names.index("version") + 1:])
                slot = (table, row["topic_id"], row["source_partition"], key)
                if slot not in self.rows or self.rows[slot][1] <= row["version"]:
                    self.rows[slot] = (counters, row["version"])
        return 1

    def load_partition(self, table, topic_id, partition, first_offset, first_record_ms, horizon_ms):
        mine = {k[3]: v for k, v in self.rows.items() if k[:3] == (table.name, topic_id, partition)}
        rows = {k: (list(c), v) for k, (c, v) in mine.items() if v >= first_offset}
        seen = [(e, ms) for t, p, ms, off, e in self.seen if (t, p) == (topic_id, partition) and off < first_offset]
        return PartitionSnapshot(rows, max((k[0] for k in mine), default=-1), sorted(seen, key=lambda s: s[1]))

    def load_rows(self, table, topic_id, partition, from_s, from_version=None):
        return {k[3]: (list(c), v) for k, (c, v) in self.rows.items()
                if k[:3] == (table.name, topic_id, partition)
                and (k[3][0] >= from_s or (from_version is not None and v >= from_version))}

    def fetch_rows(self, table, topic_id, partition, keys):
        return {k: (list(self.rows[(table.name, topic_id, partition, k)][0]), self.rows[(table.name, topic_id, partition, k)][1])
                for k in keys if (table.name, topic_id, partition, k) in self.rows}

    def recompute_partition_rollups(self, table, topic_id, partition, since_version):
        pass

    def recompute_partition_lifecycle(self, topic_id, partition, since_offset):
        return []

    def load_open_state(self, topic_id, partition, first_offset, since_record_ms):
        return [], []

    def purge_open_items(self, purges):
        from sinks.clickhouse_sink import PurgeRound

        self.purges.append(purges)
        return self.purge_results.pop(0) if self.purge_results else PurgeRound(0, True)

    def resolved_since(self, topic_id, partition, first_offset):
        return []

    def load_alert_state(self, topic_id, partition, first_offset, since_ms):
        return [], [], [], -1

    def load_open_items(self, topic_id, partition, after_ms, up_to_ms):
        return []

    def totals(self):
        total = {}
        for (table, _, _, key), (counters, _) in self.rows.items():
            if table == "service_minute":
                total[key] = [a + b for a, b in zip(total.get(key, [0] * len(counters)), counters)]
        return total


def assert_rollups_are_sums(sink) -> None:
    """Every hour, day and month row the stream wrote is the sum of its minute rows, and every
    minute row is in one."""
    from sinks.clickhouse_sink import GRAINS, LIFECYCLE_MINUTE, SECURITY_MINUTE, SERVICE_MINUTE, grain_table

    for table in (SERVICE_MINUTE, SECURITY_MINUTE, LIFECYCLE_MINUTE):
        for grain in GRAINS[1:]:
            expected = {}
            for (name, topic_id, partition, key), (counters, _) in sink.rows.items():
                if name == table.name:
                    slot = (topic_id, partition, grain.bucket(key[0]), *key[1:])
                    expected[slot] = [a + b for a, b in zip(expected.get(slot, [0] * len(counters)), counters)]
            actual = {(topic_id, partition, *key): counters
                      for (name, topic_id, partition, key), (counters, _) in sink.rows.items()
                      if name == grain_table(table, grain)}
            assert actual == expected, (table.name, grain.name)


def records(count=200, per_record=5, rate=5.0):
    simulator = Simulator(3, rate, 1_795_000_000_000, steady=True)
    events = []
    while len(events) < count * per_record:
        event = simulator.next_event()
        if event["event_type"] != "security.alert":
            events.append(event)
    return [json.dumps(events[i:i + per_record]).encode() for i in range(0, len(events), per_record)]


def processor(sink, catalogue=None):
    return Processor(SETTINGS, {TOPIC: "topic-a"}, sink, b"k", ["%02d" % i for i in range(100)],
                     clock=lambda: 1_795_000_000.0 + 10 ** 6, catalogue=catalogue)


def run(proc, values, offsets, flush_every=7):
    for n, offset in enumerate(offsets):
        proc.process(TOPIC, 0, offset, 1_795_000_000_000 + offset, values[offset])
        if n % flush_every == flush_every - 1:
            proc.flush()
    proc.flush()


def test_replay_after_crash_counts_nothing_twice():
    values = records()
    reference = MemorySink()
    run(processor(reference), values, range(len(values)))

    sink = MemorySink()
    run(processor(sink), values, range(0, 120))
    # A crash: a new worker resumes from an older committed offset, replaying 60..119.
    run(processor(sink), values, range(60, len(values)))
    assert sink.totals() == reference.totals()
    assert_rollups_are_sums(sink)


def test_rewind_within_a_worker_and_failed_flush():
    values = records()
    reference = MemorySink()
    run(processor(reference), values, range(len(values)))

    sink = MemorySink()
    proc = processor(sink)
    run(proc, values, range(0, 100))
    proc.process(TOPIC, 0, 100, 1_795_000_000_100, values[100])
    sink.fail_next = True
    try:
        proc.flush()
    except Exception:
        pass  # the worker retries; nothing processed is dropped
    run(proc, values, range(101, 150))
    run(proc, values, range(30, len(values)))  # the consumer seeks back: offsets go backwards
    assert sink.totals() == reference.totals()
    assert_rollups_are_sums(sink)


def test_late_event_for_an_evicted_minute_adds_to_the_stored_row():
    values = records(rate=0.1)  # hours of event time: hour rows leave memory too
    late = [json.dumps([dict(e, event_id="late-" + e["event_id"]) for e in json.loads(v)]).encode() for v in values[:20]]
    values = values + late  # the same early minutes again, hours later in the partition
    reference = MemorySink()
    run(processor(reference), values, range(len(values)))

    sink = MemorySink()
    proc = processor(sink)
    proc.memory_window_s = 0
    run(proc, values, range(0, len(values) - len(late)))
    proc._evict()
    assert all(key[0] >= proc.partitions[(TOPIC, 0)].max_window for key in proc.partitions[(TOPIC, 0)].minutes.rows)
    hours = proc.partitions[(TOPIC, 0)].minutes.rollups[0]
    assert hours and all(key[0] + 3600 > proc.partitions[(TOPIC, 0)].max_window for key in hours)
    run(proc, values, range(len(values) - len(late), len(values)))
    assert sink.totals() == reference.totals()
    assert_rollups_are_sums(sink)


def test_a_purge_round_is_one_call_for_every_partition_held(caplog):
    from sinks.clickhouse_sink import OpenItemsPurge

    sink = MemorySink()
    proc = processor(sink)
    values = records(count=20)
    for partition in (0, 3):
        for offset in range(10):
            proc.process(TOPIC, partition, offset, 1_795_000_000_000 + offset, values[offset])
    proc.flush()
    started = proc.clock()
    proc._purge_open_items(started + 3599)
    assert sink.purges == []  # hourly
    proc._purge_open_items(started + 3600)
    horizon_ms = SETTINGS.dedup_horizon_s * 1000
    assert sink.purges == [[OpenItemsPurge("topic-a", partition, 9, 1_795_000_000_009 - horizon_ms) for partition in (0, 3)]]
    sink.purge_results = [None]  # an earlier mutation still runs
    proc._purge_open_items(started + 7200)
    assert "waits for the next round" in caplog.text


def test_purge_rounds_follow_each_other_until_the_backlog_is_gone(caplog):
    """A round that left items for the next (ClickHouseSink.purge_open_items bounds it) is followed
    within a minute, not an hour; waiting for its own mutation then is expected, not worth a warning."""
    from sinks.clickhouse_sink import PurgeRound

    sink = MemorySink()
    proc = processor(sink)
    values = records(count=10)
    for offset in range(10):
        proc.process(TOPIC, 0, offset, 1_795_000_000_000 + offset, values[offset])
    proc.flush()
    started = proc.clock()
    sink.purge_results = [PurgeRound(200_000, False), None, PurgeRound(200_000, False), PurgeRound(1_000, True)]
    for seconds in (3600, 3629, 3630, 3660, 3690, 3720, 3750):
        proc._purge_open_items(started + seconds)
    assert len(sink.purges) == 4  # at 3600, 3630 (still running), 3660, 3690; then hourly again
    assert "waits for the next round" not in caplog.text
    proc._purge_open_items(started + 3690 + 3600)
    assert len(sink.purges) == 5


def test_a_stuck_mutation_in_a_backlog_is_warned_of_after_an_hour(caplog):
    from sinks.clickhouse_sink import PurgeRound

    sink = MemorySink()
    proc = processor(sink)
    values = records(count=10)
    for offset in range(10):
        proc.process(TOPIC, 0, offset, 1_795_000_000_000 + offset, values[offset])
    proc.flush()
    started = proc.clock()
    sink.purge_results = [PurgeRound(200_000, False)] + [None] * 200
    for seconds in range(3600, 7200 + 60, 30):
        proc._purge_open_items(started + seconds)
    assert caplog.text.count("waits for the next round") == 1
    rounds = len(sink.purges)
    proc._purge_open_items(started + 7200 + 60 + 30)
    assert len(sink.purges) == rounds  # retried hourly from then on


def test_records_are_applied_with_the_collector_paused_and_its_state_restored():
    import gc

    from opscentre.clickhouse import StoreUnavailable
    from streams.processor import Interrupted, Record

    class DownSink(MemorySink):
        def load_partition(self, *args):
            raise StoreUnavailable("down")

    values = records(count=3)
    seen = []

    class Watching(MemorySink):
        def load_partition(self, *args):
            seen.append(gc.isenabled())
            return super().load_partition(*args)

    assert gc.isenabled()
    proc = processor(Watching())
    proc.process_records(TOPIC, 0, [Record(0, 1_795_000_000_000, values[0])])
    assert seen == [False] and gc.isenabled()
    with pytest.raises(Interrupted):
        processor(DownSink()).process_records(TOPIC, 0, [Record(0, 1_795_000_000_000, values[0])])
    assert gc.isenabled()
    gc.disable()  # a caller that keeps the collector off (the writer process) finds it off
    try:
        proc.process_records(TOPIC, 0, [Record(1, 1_795_000_000_001, values[1])])
        assert not gc.isenabled()
    finally:
        gc.enable()
