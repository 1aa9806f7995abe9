"""Batched, idempotent writes into ClickHouse, and the reads a worker needs to resume.

A flush is a sequence of columnar inserts: raw events (ClickHouse copies
their accepted ids into seen_event_ids), rejections, alerts, then the
per-minute rows last (the lifecycle rows after the partition's own). The
per-minute rows carry the version (source offset) that tells a resuming worker
what is already counted, so they must only land once everything before them
has. The hour, day and month rows the stream keeps follow, for many flushes at
once (Derived).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from opscentre.clickhouse import Store, quote
from opscentre.measures import (
    LIFECYCLE_COUNTERS,
    LIFECYCLE_DIMENSIONS,
    SECURITY_COUNTERS,
    SECURITY_DIMENSIONS,
    SERVICE_COUNTERS,
    SERVICE_DIMENSIONS,
)

ROWS_WRITTEN = Counter("opscentre_sink_rows_written_total", "Rows inserted into ClickHouse", ["table"])
INSERT_SECONDS = Histogram(
    "opscentre_sink_insert_seconds", "Latency of one ClickHouse insert", ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FLUSH_FAILURES = Counter("opscentre_sink_flush_failures_total", "Flushes that failed and will be retried")

SERVICE_RAW_COLUMNS = (
    "event_id", "event_type", "occurred_ms", "province", "agency", "source", "item_id",
    "procedure_code", "service_level", "channel", "due_ms", "on_time", "result", "digitized", "amount_vnd",
    "method", "satisfied", "direction", "applicant_hash",
    "topic_id", "source_partition", "source_offset", "item_index", "record_ms",
)
# The lifecycle transitions a service event causes (streams.lifecycle.LifecycleMarks), and the
# item's province, agency and procedure when they are not the event's own ('': the event's).
MARK_COLUMNS = (
    "lc_open_entered_ms", "lc_open_entered", "lc_open_left_ms", "lc_open_left",
    "lc_overdue_entered_ms", "lc_overdue_entered", "lc_overdue_left_ms", "lc_overdue_left",
    "lc_province", "lc_agency", "lc_procedure",
)
NO_MARKS_ROW = (0, 0, 0, 0, 0, 0, 0, 0, "", "", "")
SECURITY_RAW_COLUMNS = (
    "event_id", "occurred_ms", "province", "agency", "source", "category", "severity",
    "action", "sensor", "dst_asset", "src_ip", "rule_id", "technique", "count",
    "topic_id", "source_partition", "source_offset", "item_index", "record_ms",
)
# One row per (item, status): "firing" when the item went overdue, "resolved" when it was closed after.
ALERT_COLUMNS = (
    "alert_id", "type", "kind", "item_id", "item_ref", "province", "agency", "procedure_code", "due_ms",
    "detected_ms", "replayed", "published", "published_offset", "topic_id", "source_partition", "source_offset",
    "status", "resolved_ms",
)
REJECTED_COLUMNS = (
    "topic", "topic_id", "source_partition", "source_offset", "item_index", "record_ms", "rejected_at", "reason", "original",
    "original_bytes", "original_digest",
)


@dataclass(frozen=True)
class AggregateTable:
    name: str
    dimensions: tuple
    counters: tuple

    @property
    def columns(self) -> tuple:
        return ("window_start", *self.dimensions, "topic_id", "source_partition", "version", *self.counters)


SERVICE_MINUTE = AggregateTable("service_minute", SERVICE_DIMENSIONS, SERVICE_COUNTERS)
SECURITY_MINUTE = AggregateTable("security_minute", SECURITY_DIMENSIONS, SECURITY_COUNTERS)
# Transitions of the open and overdue intervals of items (streams.lifecycle), per bucket of the
# transition's time: the sums of lifecycle_edges, kept by the stream like the partition's own rows.
LIFECYCLE_MINUTE = AggregateTable("lifecycle_minute", LIFECYCLE_DIMENSIONS, LIFECYCLE_COUNTERS)


@dataclass(frozen=True)
class KeyBucket:
    """The time bucket leading a table's sorting key (schema 9): its SQL, and that bucket of an
    instant given as SQL (`{t}`, in the table's unit: seconds for the rows, ms for raw tables).
    The keys lead with it so that a question about a short stretch of every province reads that
    stretch's rows only. ClickHouse 18.16 does not narrow a key on `toStartOfHour(window_start)`
    from conditions on `window_start`, so the readers name the buckets as well; on tables created
    before schema 9 this is a filter like any other. No column (months): every condition is ''."""

    column: str | None = None
    of: str | None = None

    def at(self, instant) -> str:
        return self.of.format(t=instant)

    def any_of(self, *instants) -> str:
        """Rows in the bucket of one of the instants."""
        if self.column is None:
            return ""
        values = sorted(set(self.at(t) for t in instants))
        return "(" + " OR ".join(f"{self.column} = {value}" for value in values) + ")"

    def between(self, low, high) -> str:
        """Rows in the buckets from that of `low` to that of `high` (inclusive)."""
        if self.column is None:
            return ""
        return f"{self.column} >= {self.at(low)} AND {self.column} <= {self.at(high)}"


@dataclass(frozen=True)
class Grain:
    """A bucket size of the per-partition rows, each coarser one the sum of the finer ones. The
    stream keeps the rows of every grain; ClickHouse recomputes them from the finer rows (and the
    lifecycle minute rows from the transitions stored) for the rows a worker that died stored past
    its last commit."""

    name: str
    bucket_sql: str  # the bucket's start (epoch s, UTC) of the row's `window_start`
    key: KeyBucket = KeyBucket()  # a coarser bucket of `window_start`

    def windows_between(self, start, end) -> str:
        """Rows whose window starts in [start, end) (epoch s, SQL or int), by the key's bucket too."""
        keyed = self.key.between(start, f"{end} - 1")
        return (f"{keyed} AND " if keyed else "") + \
            f"window_start >= toDateTime({start}) AND window_start < toDateTime({end})"

    def bucket(self, window_s: int) -> int:
        if self.name == "month":
            day = datetime.datetime.fromtimestamp(window_s, datetime.timezone.utc)
            return int(datetime.datetime(day.year, day.month, 1, tzinfo=datetime.timezone.utc).timestamp())
        return window_s - window_s % SPANS[self.name]

    def next(self, bucket_s: int) -> int:
        if self.name == "month":
            day = datetime.datetime.fromtimestamp(bucket_s, datetime.timezone.utc)
            year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
            return int(datetime.datetime(year, month, 1, tzinfo=datetime.timezone.utc).timestamp())
        return bucket_s + SPANS[self.name]


SPANS = {"minute": 60, "hour": 3600, "day": 86400}
MINUTE = Grain("minute", "toUInt32(window_start)",
               KeyBucket("toStartOfHour(window_start)", "toDateTime(intDiv({t}, 3600) * 3600)"))
HOUR = Grain("hour", "intDiv(toUInt32(window_start), 3600) * 3600",
             KeyBucket("toStartOfDay(window_start)", "toDateTime(intDiv({t}, 86400) * 86400)"))
DAY = Grain("day", "intDiv(toUInt32(window_start), 86400) * 86400",
            KeyBucket("toStartOfMonth(window_start)", "toStartOfMonth(toDateTime({t}, 'UTC'))"))
MONTH = Grain("month", "toUInt32(toStartOfMonth(window_start)) * 86400")
GRAINS = (MINUTE, HOUR, DAY, MONTH)
_RAW_HOUR = KeyBucket("toStartOfHour(occurred_at)", "toDateTime(intDiv({t}, 3600000) * 3600)")
RAW_KEYS = {  # the hour leading each raw table's sorting key, of instants in ms
    "service_events": _RAW_HOUR,
    "security_events": _RAW_HOUR,
    "lifecycle_edges": KeyBucket("intDiv(at_ms, 3600000)", "intDiv({t}, 3600000)"),
}


def raw_rows_between(table: str, low, high, unit: str = "ms") -> str:
    """The rows of a raw table (service_events, security_events) that occurred in [low, high):
    epoch ms, or whole seconds with unit="s" (Grafana's range), as ints or SQL. By the hour leading
    the key, then by the second that follows province in it, then (ms) to the millisecond."""
    if unit == "s":
        return (f"{RAW_KEYS[table].between(f'{low} * 1000', f'({high} - 1) * 1000')} "
                f"AND occurred_at >= toDateTime({low}) AND occurred_at < toDateTime({high})")
    last = high - 1 if isinstance(high, int) else f"{high} - 1"
    second = (lambda ms: ms // 1000) if isinstance(low, int) and isinstance(high, int) else \
        (lambda ms: f"intDiv({ms}, 1000)")
    return (f"{RAW_KEYS[table].between(low, last)} AND occurred_at >= toDateTime({second(low)}) "
            f"AND occurred_at <= toDateTime({second(last)}) AND occurred_ms >= {low} AND occurred_ms < {high}")


def grain_table(table: AggregateTable, grain: Grain) -> str:
    """service_minute -> service_hour, ..."""
    return table.name.rsplit("_", 1)[0] + "_" + grain.name


# The hour, day and month tables of the rows the stream keeps, by name: same columns as the minute rows.
ROLLUP_TABLES = {grain_table(table, grain): AggregateTable(grain_table(table, grain), table.dimensions, table.counters)
                 for table in (SERVICE_MINUTE, SECURITY_MINUTE, LIFECYCLE_MINUTE) for grain in GRAINS[1:]}


def at_grain(table: AggregateTable, grain: Grain) -> AggregateTable:
    """The table of the stream's `table` rows at a coarser grain."""
    return ROLLUP_TABLES[grain_table(table, grain)]


@dataclass
class WriteBatch:
    """Rows (tuples in the column order of each table) for one flush."""

    service_raw: list = field(default_factory=list)  # SERVICE_RAW_COLUMNS
    service_marks: list = field(default_factory=list)  # MARK_COLUMNS of each service_raw row, or empty
    security_raw: list = field(default_factory=list)  # SECURITY_RAW_COLUMNS
    rejected: list = field(default_factory=list)  # REJECTED_COLUMNS
    alerts: list = field(default_factory=list)  # ALERT_COLUMNS
    service_minute: list = field(default_factory=list)  # SERVICE_MINUTE.columns
    security_minute: list = field(default_factory=list)  # SECURITY_MINUTE.columns
    lifecycle_minute: list = field(default_factory=list)  # LIFECYCLE_MINUTE.columns
    # {ROLLUP_TABLES name: [rows in its columns' order]}: written after the others (Derived), not
    # by inserts().
    rollups: dict = field(default_factory=dict)

    def inserts(self):
        """(table, column names, columns, row count) to insert, in order: per-minute rows last
        (see module docstring)."""
        return [
            (table, names, columns, count)
            for table, names, columns, count in (
                ("service_events", SERVICE_RAW_COLUMNS + (MARK_COLUMNS if self.service_marks else ()),
                 _columns(self.service_raw, len(SERVICE_RAW_COLUMNS))
                 + (_columns(self.service_marks, len(MARK_COLUMNS)) if self.service_marks else []),
                 len(self.service_raw)),
                ("security_events", SECURITY_RAW_COLUMNS, _columns(self.security_raw, len(SECURITY_RAW_COLUMNS)),
                 len(self.security_raw)),
                ("rejected_events", REJECTED_COLUMNS, _columns(self.rejected, len(REJECTED_COLUMNS)), len(self.rejected)),
                ("alerts", ALERT_COLUMNS, _columns(self.alerts, len(ALERT_COLUMNS)), len(self.alerts)),
                ("service_minute", SERVICE_MINUTE.columns, _columns(self.service_minute, len(SERVICE_MINUTE.columns)),
                 len(self.service_minute)),
                ("security_minute", SECURITY_MINUTE.columns,
                 _columns(self.security_minute, len(SECURITY_MINUTE.columns)), len(self.security_minute)),
                # After the service rows: a lifecycle row stored says its records' rows are too.
                ("lifecycle_minute", LIFECYCLE_MINUTE.columns,
                 _columns(self.lifecycle_minute, len(LIFECYCLE_MINUTE.columns)), len(self.lifecycle_minute)),
            )
            if count
        ]


# ClickHouse parses at most max_query_size bytes of a statement (256 KiB by default, the rest of
# an INSERT excepted): a literal list is cut into statements of at most this many bytes.
LITERAL_LIST_BYTES = 64 * 1024


def literal_lists(literals: list, budget: int = LITERAL_LIST_BYTES):
    """(how many, the literals joined by ", ") in lists of at most `budget` bytes each."""
    chunk, size = [], 0
    for literal in literals:
        if chunk and size + len(literal) + 2 > budget:
            yield len(chunk), ", ".join(chunk)
            chunk, size = [], 0
        chunk.append(literal)
        size += len(literal) + 2
    if chunk:
        yield len(chunk), ", ".join(chunk)


def bucket_chunks(touched: set, budget: int = LITERAL_LIST_BYTES):
    """(the distinct buckets, literal list) of the (topic id, partition, bucket) given, in chunks of
    at most `budget` bytes."""
    ordered = sorted(touched)
    start = 0
    for count, keys in literal_lists([f"({quote(t)}, {int(p)}, {int(b)})" for t, p, b in ordered], budget):
        buckets = sorted({b for _, _, b in ordered[start:start + count]})
        start += count
        yield buckets, keys


MAX_RANGES = 256


def bucket_ranges(column: str, buckets: list, next_bucket, literal=str) -> str:
    """`column` within the given buckets (ascending starts, epoch s; `next_bucket(b)` is where b ends),
    adjacent buckets as one range: the sorting key reads only those stretches. One range from the
    first to the last read everything between: a dossier's due minute is days after its receipt."""
    ranges: list = []
    for bucket in buckets:
        if ranges and ranges[-1][1] == bucket:
            ranges[-1][1] = next_bucket(bucket)
        else:
            ranges.append([bucket, next_bucket(bucket)])
    if len(ranges) > MAX_RANGES:  # keep the statement short: close the narrowest gaps
        gaps = sorted(range(len(ranges) - 1), key=lambda i: ranges[i + 1][0] - ranges[i][1])
        closed = set(gaps[:len(ranges) - MAX_RANGES])
        merged = [ranges[0]]
        for i in range(1, len(ranges)):
            if i - 1 in closed:
                merged[-1] = [merged[-1][0], ranges[i][1]]
            else:
                merged.append(ranges[i])
        ranges = merged
    return " OR ".join(f"({column} >= {literal(low)} AND {column} < {literal(high)})" for low, high in ranges)


def keyed_rollups(rollups: dict) -> dict:
    """A batch's rollup rows ({table: [row]}) by key: {table: {(bucket, *dimensions, topic id, partition): row}}."""
    keyed = {}
    for table, rows in rollups.items():
        key_width = len(ROLLUP_TABLES[table].columns) - len(ROLLUP_TABLES[table].counters) - 1  # before the version
        keyed[table] = {tuple(row[:key_width]): row for row in rows}
    return keyed


@dataclass
class Derived:
    """What stored batches leave to write: the hour, day and month rows the stream computed
    ({table: {row key: row}}, the newest row of each key). They are sums of stored minute rows,
    so the rows of many batches are written at once, after those are readable, and writing them
    again is always safe."""

    rollups: dict = field(default_factory=dict)

    @staticmethod
    def of(batch: WriteBatch) -> "Derived":
        return Derived(keyed_rollups(batch.rollups))

    def update(self, other: "Derived") -> None:
        """Add a later batch's: its rows replace this one's of the same key."""
        for table, rows in other.rollups.items():
            self.rollups.setdefault(table, {}).update(rows)

    def __bool__(self) -> bool:
        return bool(self.rollups)


def _columns(rows: list, width: int) -> list:
    # Tuples as zip makes them: the driver copies each column into its blocks anyway.
    return list(zip(*rows)) if rows else [() for _ in range(width)]


def record_write(stats) -> int:
    written = 0
    for table, rows, seconds in stats:
        INSERT_SECONDS.labels(table).observe(seconds)
        ROWS_WRITTEN.labels(table).inc(rows)
        written += rows
    return written


def drop_before(store: Store, table: str, partition_below: int) -> list[str]:
    """Drop the partitions of `table` whose id (YYYYMM or YYYYMMDD) is below `partition_below` (on a
    cluster, of its local table on every node)."""
    dropped = []
    for node in store.nodes():
        local = node.local(table).rsplit(".", 1)[1]
        for (partition,) in node.query(
                f"SELECT DISTINCT partition FROM system.parts WHERE database = '{node.database}' AND table = '{local}' "
                "AND active"):
            value = str(partition).strip("'")
            if value.isdigit() and int(value) < partition_below:
                node.execute(f"ALTER TABLE {node.local(table)} DROP PARTITION {value}")
                dropped.append(f"{table} {value}")
    return dropped


# What identifies an open_items row: the event it was stored from (a repeat has the same, and goes too).
PURGED_ROW_KEY = "topic_id, source_partition, source_offset, item_index"


@dataclass(frozen=True)
class OpenItemsPurge:
    """One partition's purge (ClickHouseSink.purge_open_items)."""
    topic_id: str
    partition: int
    before_offset: int
    before_record_ms: int


@dataclass(frozen=True)
class PurgeRound:
    """What one round of purges sent (ClickHouseSink.purge_open_items)."""
    staged: int  # open_items rows the round's mutation deletes
    complete: bool  # every item the purges name was staged; else the next round goes on with the rest


# A purge's mutation builds its IN set again for every part it rewrites, in as many threads at
# once as the server's background pool (16 on 18.16): measured there, about 1.5 KB a staged row in
# all (0.45 M rows: 0.7 GB), and 13.6 M rows staged in one round took ClickHouse 18.16 past 24 GB,
# and the kernel killed it (bench/README). So a round stages the rows of at most this many items
# (about 2 rows each: some 0.3 GB), and one that had more left is followed by the next soon after.
PURGE_ITEMS_PER_ROUND = 100_000


@dataclass
class PartitionSnapshot:
    rows: dict  # key (window_s, *dims) -> (counters list, version)
    max_window: int  # latest minute (epoch s) with a row; -1 when none
    seen: list  # (event_id, record_ms), ascending


class ClickHouseSink:
    def __init__(self, store: Store):
        self.store = store

    def write(self, batch: WriteBatch) -> int:
        """Insert a batch and recompute what derives from it; returns the number of rows written."""
        return record_write(self.write_rows(batch))

    def write_rows(self, batch: WriteBatch) -> list:
        """Insert a batch, then what derives from it; returns (table, rows, seconds) per statement, for the metrics."""
        return self.store_rows(batch) + self.derive_rows(Derived.of(batch))

    def insert(self, batch: WriteBatch) -> "Derived":
        """Insert a batch (readable at once); returns what the worker must still derive from it."""
        record_write(self.store_rows(batch))
        return Derived.of(batch)

    def derive(self, derived: "Derived") -> int:
        return record_write(self.derive_rows(derived))

    def store_rows(self, batch: WriteBatch) -> list:
        """The batch's inserts: (table, rows, seconds) per statement."""
        stats = []
        for table, names, columns, count in batch.inserts():
            started = time.perf_counter()
            self.store.insert(table, list(names), columns)
            stats.append((table, count, time.perf_counter() - started))
        return stats

    def derive_rows(self, derived: "Derived") -> list:
        """What stored batches left (Derived): their hour, day and month rows."""
        stats = []
        for table, rows in derived.rollups.items():
            started = time.perf_counter()
            columns = ROLLUP_TABLES[table].columns
            self.store.insert(table, list(columns), _columns(list(rows.values()), len(columns)))
            stats.append((table, len(rows), time.perf_counter() - started))
        return stats

    def recompute_lifecycle(self, touched: set) -> list:
        """The lifecycle minute rows of the (topic id, partition, minute) given, from lifecycle_edges,
        then their rollups: for the rows a worker that died may have left behind its transitions.
        A function of stored rows: always safe to redo."""
        bucket = "intDiv(intDiv(at_ms, 1000), 60) * 60"
        hour = RAW_KEYS["lifecycle_edges"].column
        sums = ", ".join(
            f"sumIf(weight, kind = '{kind}' AND family = '{family}' AND direction = '{direction}')"
            for kind in ("dossier", "feedback") for family in ("open", "overdue") for direction in ("entered", "left"))
        started = time.perf_counter()
        for buckets, keys in bucket_chunks(touched):
            self.store.execute(
                f"INSERT INTO {self.store.table(LIFECYCLE_MINUTE.name)} ({', '.join(LIFECYCLE_MINUTE.columns)}) "
                f"SELECT toDateTime({bucket}) AS window, province, agency, procedure_code, topic_id, source_partition, "
                f"max(source_offset), {sums} FROM {self.store.table('lifecycle_edges')} FINAL "
                f"WHERE ({bucket_ranges(hour, sorted({b // 3600 for b in buckets}), lambda h: h + 1)}) "
                f"AND ({bucket_ranges('at_ms', buckets, lambda b: b + 60, lambda s: s * 1000)}) "
                f"AND (topic_id, source_partition, {bucket}) IN ({keys}) "
                f"GROUP BY window, province, agency, procedure_code, topic_id, source_partition")
        stats = [(LIFECYCLE_MINUTE.name, len(touched), time.perf_counter() - started)]
        return stats + self.recompute_rollups(LIFECYCLE_MINUTE, touched)

    def recompute_partition_lifecycle(self, topic_id: str, partition: int, since_offset: int) -> list:
        """The lifecycle rows of a partition's edges stored at or after `since_offset` (a take-over);
        returns the minutes recomputed."""
        minutes = [int(m) for (m,) in self.store.query(
            f"SELECT DISTINCT intDiv(intDiv(at_ms, 1000), 60) * 60 FROM {self.store.table('lifecycle_edges')} "
            f"WHERE topic_id = {quote(topic_id)} AND source_partition = {int(partition)} "
            f"AND source_offset >= {int(since_offset)}")]
        if minutes:
            self.recompute_lifecycle({(topic_id, partition, m) for m in minutes})
        return minutes

    # -- open items (streams.lifecycle) ----------------------------------------------------

    def load_open_state(self, topic_id: str, partition: int, first_offset: int, since_record_ms: int) -> tuple:
        """For a worker resuming a partition at `first_offset`, as of that offset: the items received
        and not closed (kind, item_id, received_ms, due_ms, province, agency, procedure_code, detected_ms of
        its overdue alert or 0),
        and the closings recorded since `since_record_ms` (kind, item_id, closed_ms, record_ms, received),
        oldest first. The first receipt of an item counts, by position in the partition."""
        source = f"topic_id = {quote(topic_id)} AND source_partition = {int(partition)}"
        before = f"{source} AND source_offset < {int(first_offset)}"
        position = "source_offset * 100000 + item_index"
        table = self.store.table("open_items")
        alerted = f"SELECT kind, item_id FROM {self.store.table('alerts')} WHERE {source} AND status = 'firing'"
        open_items = self.store.query(
            f"SELECT kind, item_id, argMinIf(occurred_ms, {position}, NOT closed), argMinIf(due_ms, {position}, NOT closed), "
            f"argMinIf(province, {position}, NOT closed), argMinIf(agency, {position}, NOT closed), "
            f"argMinIf(procedure_code, {position}, NOT closed), (kind, item_id) IN ({alerted}) "
            f"FROM {table} WHERE {before} GROUP BY kind, item_id HAVING countIf(closed) = 0")
        closings = self.store.query(
            f"SELECT kind, item_id, argMinIf(occurred_ms, {position}, closed), maxIf(record_ms, closed), "
            f"countIf(NOT closed) > 0 AS received FROM {table} WHERE {before} AND (kind, item_id) IN "
            f"(SELECT kind, item_id FROM {table} WHERE {before} AND closed AND record_ms >= {int(since_record_ms)}) "
            f"GROUP BY kind, item_id ORDER BY maxIf(record_ms, closed)")
        detected = {}
        # By (kind, province, item): the prefix of alerts' sorting key.
        for _, keys in literal_lists([f"({quote(k)}, {quote(p)}, {quote(i)})" for k, i, _, _, p, *_, al in open_items if al]):
            detected.update(((k, i), int(ms)) for k, i, ms in self.store.query(
                f"SELECT kind, item_id, max(detected_ms) FROM {self.store.table('alerts')} WHERE {source} "
                f"AND status = 'firing' AND (kind, province, item_id) IN ({keys}) GROUP BY kind, item_id"))
        return ([(k, i, int(r), int(d), p, a, c, max(1, detected.get((k, i), 1)) if al else 0)
                 for k, i, r, d, p, a, c, al in open_items],
                [(k, i, int(c), int(ms), bool(received)) for k, i, c, ms, received in closings])

    def purge_open_items(self, purges: list[OpenItemsPurge],
                         items_per_round: int = PURGE_ITEMS_PER_ROUND) -> PurgeRound | None:
        """Forget the items each purge names: closed before its `before_offset` by a closing recorded
        before its `before_record_ms`. No take-over will need them. Their rows stored under another
        topic id go too: a topic created again (or a new Kafka cluster) gets a new id, and a receipt
        left under the old one would list its item as open once the closing is gone. The topic's
        other partitions keep theirs: their workers purge them.

        The rows to delete are staged in open_items_purges first, then deleted by one mutation (which
        ClickHouse runs in the background) naming them exactly. ClickHouse 18.16 applies the pending
        mutations of a part in one pass, and there gives every `IN (subquery)` but one the wrong set:
        of eight purges sent at once, those of two partitions out of four deleted nothing (bench/README).
        A mutation that reads the table it mutates also sees the parts it already changed. So one round
        is one mutation, none is sent while another is still running, and its set never changes.
        A round takes whole items, at most `items_per_round` (PURGE_ITEMS_PER_ROUND): an item whose
        closing went without its receipt would be listed as open again.
        Returns None when an earlier purge still runs (the next round retries)."""
        if self.purge_running():
            return None
        drop_before(self.store, "open_items_purges",  # their mutations are done: none is running
                    int(datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")))
        staged, complete = 0, True
        purge_id = time.time_ns()
        items_each = max(1, items_per_round // max(1, len(purges)))
        for node in self.store.nodes():  # a mutation runs on the table holding the rows
            items, stage = node.local("open_items"), node.local("open_items_purges")
            for purge in purges:
                source = f"topic_id = {quote(purge.topic_id)} AND source_partition = {int(purge.partition)}"
                closed = (f"SELECT DISTINCT kind, item_id FROM {items} WHERE {source} AND closed "
                          f"AND source_offset < {int(purge.before_offset)} AND record_ms < {int(purge.before_record_ms)}")
                (found,) = node.query(f"SELECT count() FROM ({closed} LIMIT {items_each + 1})")[0]
                if not int(found):
                    continue
                complete = complete and int(found) <= items_each
                node.execute(
                    f"INSERT INTO {stage} (purge_id, {PURGED_ROW_KEY}) SELECT {purge_id}, {PURGED_ROW_KEY} FROM {items} "
                    f"WHERE ({source} AND source_offset < {int(purge.before_offset)} OR topic_id != {quote(purge.topic_id)}) "
                    f"AND (kind, item_id) IN ({closed} LIMIT {items_each})")
            (rows,) = node.query(f"SELECT count() FROM {stage} WHERE purge_id = {purge_id}")[0]
            if int(rows):
                node.execute(f"ALTER TABLE {items} DELETE WHERE ({PURGED_ROW_KEY}) IN "
                             f"(SELECT {PURGED_ROW_KEY} FROM {stage} WHERE purge_id = {purge_id})")
            staged += int(rows)
        return PurgeRound(staged, complete)

    def purge_running(self) -> bool:
        """Whether a mutation of open_items (a purge's) has not finished on some node."""
        for node in self.store.nodes():
            if node.query(f"SELECT mutation_id FROM system.mutations WHERE database = {quote(node.database)} "
                          f"AND table = {quote(node.local('open_items').rsplit('.', 1)[1])} AND NOT is_done"):
                return True
        return False

    def recompute_rollups(self, table: AggregateTable, touched: set) -> list:
        """Recompute the hour, day and month rows over the (topic id, partition, minute) given, each
        level the sum of the one below it (FINAL: the newest version of every row).

        A coarse row is a function of the stored finer rows, so recomputing it is always safe:
        after a write, and for a partition taken over, whose last rows may have been stored by a
        worker that died before their rollups were (their records were not acknowledged then)."""
        stats = []
        dims = ", ".join(table.dimensions)
        sums = ", ".join(f"sum({name})" for name in table.counters)
        columns = ", ".join(table.columns)
        for finer, coarser in zip(GRAINS, GRAINS[1:]):
            touched = {(topic_id, partition, coarser.bucket(window)) for topic_id, partition, window in touched}
            started = time.perf_counter()
            for buckets, keys in bucket_chunks(touched):
                self.store.execute(
                    f"INSERT INTO {self.store.table(grain_table(table, coarser))} ({columns}) "
                    f"SELECT toDateTime({coarser.bucket_sql}) AS bucket, {dims}, topic_id, source_partition, max(version), "
                    f"{sums} FROM {self.store.table(grain_table(table, finer))} FINAL "
                    f"WHERE ({bucket_ranges(finer.key.column, buckets, coarser.next, finer.key.at)}) "
                    f"AND ({bucket_ranges('window_start', buckets, coarser.next, lambda s: f'toDateTime({s})')}) "
                    f"AND (topic_id, source_partition, {coarser.bucket_sql}) IN ({keys}) "
                    f"GROUP BY bucket, {dims}, topic_id, source_partition")
            stats.append((grain_table(table, coarser), len(touched), time.perf_counter() - started))
        return stats

    def recompute_partition_rollups(self, table: AggregateTable, topic_id: str, partition: int, since_version: int) -> None:
        """Rollups of a partition's rows stored at or after `since_version` (see recompute_rollups)."""
        windows = self.store.query(
            f"SELECT DISTINCT toUInt32(window_start) FROM {self.store.table(table.name)} "
            f"WHERE topic_id = {quote(topic_id)} AND source_partition = {int(partition)} AND version >= {int(since_version)}")
        if windows:
            self.recompute_rollups(table, {(topic_id, partition, int(w)) for (w,) in windows})

    def _select_rows(self, table: AggregateTable, where: str) -> dict:
        dims = ", ".join(table.dimensions)
        counters = ", ".join(table.counters)
        sql = (
            f"SELECT toUInt32(window_start), {dims}, {counters}, version "
            f"FROM {self.store.table(table.name)} FINAL WHERE {where}"
        )
        width = 1 + len(table.dimensions)
        rows = {}
        for record in self.store.query(sql):
            key = tuple(int(v) if i == 0 else v for i, v in enumerate(record[:width]))
            rows[_normalise_key(table, key)] = ([int(v) for v in record[width:-1]], int(record[-1]))
        return rows

    def load_partition(self, table: AggregateTable, topic_id: str, partition: int, first_offset: int,
                       first_record_ms: int, horizon_ms: int) -> PartitionSnapshot:
        source = f"topic_id = {quote(topic_id)} AND source_partition = {int(partition)}"
        rows = self._select_rows(table, f"{source} AND version >= {int(first_offset)}")
        max_window, row_count = self.store.query(
            f"SELECT toUInt32(max(window_start)), count() FROM {self.store.table(table.name)} WHERE {source}"
        )[0]
        seen = self.store.query(
            f"SELECT event_id, record_ms FROM {self.store.table('seen_event_ids')} "
            f"WHERE {source} AND record_ms >= {max(0, int(first_record_ms - horizon_ms * 1.1))} "
            f"AND source_offset < {int(first_offset)} ORDER BY record_ms"
        )
        return PartitionSnapshot(rows, int(max_window) if int(row_count) else -1, [(e, int(ms)) for e, ms in seen])

    def load_rows(self, table: AggregateTable, topic_id: str, partition: int, from_s: int,
                  from_version: int | None = None) -> dict:
        """A partition's stored rows of the buckets from `from_s` (epoch s) on, and any with a
        version at or past `from_version`: {(bucket s, *dimensions): (counters, version)}."""
        where = f"window_start >= toDateTime({int(from_s)})"
        if from_version is not None:
            where = f"({where} OR version >= {int(from_version)})"
        return self._select_rows(table, f"topic_id = {quote(topic_id)} AND source_partition = {int(partition)} AND {where}")

    def fetch_rows(self, table: AggregateTable, topic_id: str, partition: int, keys) -> dict:
        keys = list(keys)
        found = {}
        source = f"topic_id = {quote(topic_id)} AND source_partition = {int(partition)}"
        tuple_sql = f"(toUInt32(window_start), {', '.join(table.dimensions)})"
        literals = ["(" + ", ".join(quote(v) for v in key) + ")" for key in keys]
        for _, values in literal_lists(literals):
            found.update(self._select_rows(table, f"{source} AND {tuple_sql} IN ({values})"))
        return found


    # -- overdue tracking (streams.overdue) ------------------------------------------------

    def load_open_items(self, topic_id: str, partition: int, after_ms: int | None, up_to_ms: int) -> list:
        """Items of a partition received and not closed, due in (after_ms, up_to_ms], never alerted.

        Reads the receipts due in the range (`item_receipts`, ordered by due time) and the closings
        of those items only (`item_closings`, by item): the cost follows the range, not the history."""
        source = f"topic_id = {quote(topic_id)} AND source_partition = {int(partition)}"
        due = f"due_ms <= {int(up_to_ms)}" + ("" if after_ms is None else f" AND due_ms > {int(after_ms)}")
        in_range = f"FROM {self.store.table('item_receipts')} WHERE {source} AND {due}"
        receipts = self.store.query(
            f"SELECT kind, item_id, any(due_ms), any(province), any(agency), any(procedure_code) {in_range} "
            f"AND (kind, item_id) NOT IN (SELECT kind, item_id FROM {self.store.table('alerts')} WHERE {source}) "
            f"GROUP BY kind, item_id")
        if not receipts:
            return []
        # Open: no completion, cancellation or resolution at or before the due time (an item
        # closed late went overdue first: it is alerted too).
        first_close = dict(((kind, item_id), int(ms)) for kind, item_id, ms in self.store.query(
            f"SELECT kind, item_id, min(occurred_ms) FROM {self.store.table('item_closings')} "
            f"WHERE {source} AND occurred_ms <= {int(up_to_ms)} AND (kind, item_id) IN (SELECT kind, item_id {in_range}) "
            f"GROUP BY kind, item_id"))
        return [(kind, item_id, int(due_ms), province, agency, procedure)
                for kind, item_id, due_ms, province, agency, procedure in receipts
                if first_close.get((kind, item_id), int(due_ms) + 1) > int(due_ms)]

    def load_alert_state(self, topic_id: str, partition: int, first_offset: int, since_ms: int) -> tuple:
        """For a worker resuming a partition at `first_offset`: (kind, item_id, detected_ms) of alerts raised
        by records it will see again, alert rows (firing or resolved) stored but never published, and
        ("kind:item_id", record_ms) of items closed since `since_ms` (record time), oldest first, and the
        alerts-topic offset of the last alert message known to be published from this partition (-1: none)."""
        source = f"topic_id = {quote(topic_id)} AND source_partition = {int(partition)}"
        alerts = self.store.table("alerts")
        alerted = [(k, i, int(d)) for k, i, d in self.store.query(
            f"SELECT kind, item_id, detected_ms FROM {alerts} FINAL WHERE {source} AND status = 'firing' "
            f"AND source_offset >= {int(first_offset)}")]
        unpublished = [tuple(row) for row in self.store.query(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM {alerts} FINAL WHERE {source} AND published = 0")]
        closed = [(f"{kind}:{item_id}", int(ms)) for kind, item_id, ms in self.store.query(
            f"SELECT DISTINCT kind, item_id, record_ms FROM {self.store.table('item_closings')} "
            f"WHERE {source} AND record_ms >= {int(since_ms)} AND in_time ORDER BY record_ms")]
        last_published = self.store.query(
            f"SELECT max(published_offset), count() FROM {alerts} WHERE {source} AND published = 1")[0]
        return alerted, unpublished, closed, int(last_published[0]) if int(last_published[1]) else -1

    def resolved_since(self, topic_id: str, partition: int, first_offset: int) -> list:
        """(kind, item_id) of alerts resolved by records a resuming worker will see again."""
        source = f"topic_id = {quote(topic_id)} AND source_partition = {int(partition)}"
        return [tuple(row) for row in self.store.query(
            f"SELECT kind, item_id FROM {self.store.table('alerts')} WHERE {source} AND status = 'resolved' "
            f"AND source_offset >= {int(first_offset)}")]


def _normalise_key(table: AggregateTable, key: tuple) -> tuple:
    if table is SECURITY_MINUTE:
        # severity is the 4th element: (window, province, category, severity, ...)
        return key[:3] + (int(key[3]),) + key[4:]
    return key
