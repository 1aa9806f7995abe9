"""Per-partition processing: validate, de-duplicate, aggregate by minute, resume exactly.

Every source partition is processed on its own and its state is a pure
function of the partition's records in offset order. Per-minute rows are
keyed by (minute, dimensions, topic id, partition) and hold that partition's
cumulative counts, written with the offset of the last record applied as
their version. A worker that takes a partition over reloads from ClickHouse
the rows whose version is at or past its first offset, and skips a record for
a row whose stored version already covers it. Redelivery after a crash or a
rebalance, and replays of processed offsets, therefore rewrite rows with the
same counts instead of adding to them.
"""

from __future__ import annotations

import datetime
import gc
import heapq
import logging
import time
import traceback
from operator import add, sub
from typing import NamedTuple

import msgspec
from prometheus_client import Counter, Gauge, Histogram

from opscentre.catalogue import Catalogue, default_catalogue
from opscentre.clickhouse import StoreError
from opscentre.events import (
    DossierCancelled,
    DossierCompleted,
    DossierReceived,
    FeedbackReceived,
    FeedbackResolved,
    MAX_MS,
    MIN_MS,
    YEARS,
    PaymentCompleted,
    Pseudonymiser,
    Rejection,
    SecurityAlert,
    Validator,
    to_millis,
)
from opscentre.measures import END_TO_END_BUCKETS, SECURITY_COUNTERS, SERVICE_COUNTERS
from opscentre.rejections import dead_letter, scrub_personal, stored_original
from opscentre.telemetry import observe_many
from sinks.clickhouse_sink import (
    ALERT_COLUMNS,
    GRAINS,
    LIFECYCLE_MINUTE,
    NO_MARKS_ROW,
    SECURITY_MINUTE,
    SERVICE_RAW_COLUMNS,
    SERVICE_MINUTE,
    ClickHouseSink,
    OpenItemsPurge,
    WriteBatch,
    at_grain,
)

from .dedup import RecentIds
from .lifecycle import NO_MARKS, Lifecycle
from .overdue import ALERT_TYPES, OpenItem, OverdueTracker, item_key, open_item

log = logging.getLogger(__name__)

RECORDS = Counter("opscentre_stream_records_total", "Kafka records consumed", ["topic"])
EVENTS_VALID = Counter("opscentre_stream_events_valid_total", "Valid events accepted", ["event_type"])
EVENTS_REJECTED = Counter("opscentre_stream_events_rejected_total", "Records or items sent to the dead-letter topic",
                          ["reason", "topic"])
INTERNAL_ERRORS = Counter("opscentre_stream_internal_errors_total",
                          "Records rejected because processing them raised an unexpected error", ["topic"])
DUPLICATES = Counter("opscentre_stream_duplicates_dropped_total", "Events dropped as duplicates of an event_id within the horizon")
REPLAYED = Counter("opscentre_stream_records_already_applied_total", "Records redelivered whose effect was already stored")
LATENCY = Histogram(
    "opscentre_stream_end_to_end_seconds", "From record produced to its rows written in ClickHouse",
    buckets=END_TO_END_BUCKETS,
)
LAST_WINDOW = Gauge("opscentre_stream_last_window_written_seconds", "Start of the latest minute written (epoch s)")
PARTITIONS = Gauge("opscentre_stream_partitions_owned", "Source partitions with state in this worker")
OVERDUE_ALERTS = Counter("opscentre_stream_overdue_alerts_total", "Overdue alerts raised", ["type", "replayed"])
TRACKED_ITEMS = Gauge("opscentre_stream_open_items_tracked", "Open items due within the look-ahead, in memory")
UNKNOWN_AGENCY = Counter("opscentre_stream_unknown_agency_events_total",
                         "Valid service events whose agency code is not in the catalogue", ["province"])
WATERMARK = Gauge("opscentre_stream_watermark_seconds", "Event-time watermark of a source partition (epoch s)",
                  ["partition"])
PUBLISHED, ALERT_ID, STATUS, SOURCE_OFFSET = (
    ALERT_COLUMNS.index(name) for name in ("published", "alert_id", "status", "source_offset"))

(
    RECEIVED, RECEIVED_FULL_ONLINE, RECEIVED_PARTIAL_ONLINE, COMPLETED, COMPLETED_ON_TIME, CANCELLED,
    PAYMENTS, PAYMENTS_ONLINE, PAYMENTS_VND, PAYMENTS_ONLINE_VND, FEEDBACK_RECEIVED, FEEDBACK_RESOLVED,
    FEEDBACK_RESOLVED_ON_TIME, FEEDBACK_SATISFIED, DOCUMENTS_SENT, DOCUMENTS_RECEIVED,
) = (SERVICE_COUNTERS.index(name) for name in (
    "dossiers_received", "dossiers_received_full_online", "dossiers_received_partial_online",
    "dossiers_completed", "dossiers_completed_on_time", "dossiers_cancelled", "payments_total",
    "payments_online", "payments_vnd", "payments_online_vnd", "feedback_received", "feedback_resolved",
    "feedback_resolved_on_time", "feedback_satisfied", "documents_sent", "documents_received",
))
N_SERVICE = len(SERVICE_COUNTERS)
N_SECURITY = len(SECURITY_COUNTERS)
EVICT_EVERY_S = 60.0
_LIFECYCLE_EVENTS = frozenset({DossierReceived, DossierCompleted, DossierCancelled, FeedbackReceived, FeedbackResolved})
PURGE_EVERY_S = 3600.0  # open items closed long enough ago leave ClickHouse's open_items this often
PURGE_BACKLOG_EVERY_S = 30.0  # a round that left items for the next is followed this soon (once its mutation is done)


_CHILDREN: dict = {}


def _child(metric, *labels):
    """A labelled child of a metric, looked up once: `labels()` costs ~2 µs, a record a few of them."""
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def _lifecycle_event(event, occurred_ms: int) -> tuple:
    """The event as streams.lifecycle takes it."""
    cls = type(event)
    if cls is DossierReceived:
        return ("dossier", event.dossier_id, occurred_ms, to_millis(event.due_at), event.province, event.agency,
                event.procedure_code)
    if cls is FeedbackReceived:
        return ("feedback", event.feedback_id, occurred_ms, to_millis(event.due_at), event.province, event.agency, "")
    if cls is FeedbackResolved:
        return ("feedback", event.feedback_id, occurred_ms)
    return ("dossier", event.dossier_id, occurred_ms)


class ProcessorFailure(RuntimeError):
    """The processor's state may no longer be exact: the worker must stop, and the records since the
    last commit are redelivered to a fresh one."""


class _Plan(NamedTuple):
    """What applying a run of records will change, gathered before anything is changed."""

    touched: dict  # row key -> [row or None (new), counters to add, agency unknown, stored version]
    width: int
    raw: list  # raw event rows
    raw_table: list  # the batch list they go to
    items: tuple | list  # per record, for the overdue tracker: OpenItem receipts, (kind, item, occurred, due) closings
    hashes: list
    fresh: list
    times: list  # record time of each event, for the memory of ids
    accepted: dict
    duplicates: int
    unknown_agency: dict
    lifecycle_events: tuple | list  # per record, (raw row index or None, event) for streams.lifecycle


class Record(NamedTuple):
    offset: int
    timestamp: int  # record time, epoch ms
    value: bytes | None


class Interrupted(StoreError):
    """ClickHouse could not be read to take a partition over: `applied` records were applied, with
    these dead letters; the rest are to be given again."""

    def __init__(self, applied: int, letters: list):
        super().__init__(f"interrupted after {applied} records")
        self.applied = applied
        self.letters = letters


class Snapshot(NamedTuple):
    batch: WriteBatch
    versions: list  # (partition state, row set, version, keys written)
    record_ms: list  # produce times of the records it stores, for the latency metric
    latest_window: int


class Row:
    """One (minute, dimensions) row of a partition: counts and the version stored in ClickHouse."""

    __slots__ = ("counters", "version", "needs_base", "unknown_agency", "written")

    def __init__(self, width: int, version: int = -1, needs_base: bool = False):
        self.counters = [0] * width
        self.version = version  # highest source offset whose effect is stored (-1: nothing known)
        self.needs_base = needs_base  # stored counts may exist and must be added before writing
        # Service rows: the agency is not in the catalogue. Asked once per row, not per event.
        self.unknown_agency = False
        # The counters last put in a snapshot (None: none yet): what changed since goes to the
        # hour, day and month rows. `counters` is replaced, never changed in place.
        self.written = None


# The grains the stream sums minute rows into (hour, day, month).
ROLLUP_GRAINS = GRAINS[1:]


class RowSet:
    """A partition's rows of one minute table (`table`: its own events', or its items' lifecycle
    transitions) with the hour, day and month rows summed from their changes.

    Minutes up to `stored_up_to` may have stored rows not in memory (stored before the take-over,
    or evicted since); later minutes' stored rows are all in memory. Likewise the buckets before
    `rollups_loaded_from` (per grain: loaded from there at the take-over) or starting up to
    `rollups_evicted_up_to`. A row that may have a stored row not in memory gets it added before
    it is written (Processor._add_stored).

    The minute rows are also filed by minute (`held`, and `held_minutes` as a heap), so that
    evicting them costs what is evicted, not every row held: after a backfill's minute of wall
    time, hundreds of thousands of rows."""

    __slots__ = ("table", "rows", "dirty", "stored_up_to", "rollups", "rollups_loaded_from", "rollups_evicted_up_to",
                 "held", "held_minutes")

    def __init__(self, table):
        self.table = table
        self.rows: dict = {}
        self.dirty: set = set()
        self.stored_up_to = -1
        self.rollups: list = [{} for _ in ROLLUP_GRAINS]
        self.rollups_loaded_from: list = [-1 for _ in ROLLUP_GRAINS]
        self.rollups_evicted_up_to = -1
        self.held: dict = {}  # minute -> the keys of its rows
        self.held_minutes: list = []  # the minutes of `held`, a heap

    def new_row(self, key: tuple) -> Row:
        row = self.rows[key] = Row(len(self.table.counters), needs_base=key[0] <= self.stored_up_to)
        self._hold(key)
        return row

    def _hold(self, key: tuple) -> None:
        keys = self.held.get(key[0])
        if keys is None:
            keys = self.held[key[0]] = []
            heapq.heappush(self.held_minutes, key[0])
        keys.append(key)

    def new_coarse_row(self, grain_index: int, key: tuple) -> Row:
        bucket = key[0]
        row = self.rollups[grain_index][key] = Row(
            len(self.table.counters),
            needs_base=bucket < self.rollups_loaded_from[grain_index] or bucket <= self.rollups_evicted_up_to)
        return row

    def load(self, rows: dict, stored_up_to: int, rollups: list) -> None:
        """Stored rows ({key: (counters, version)}), and per grain (bucket loaded from, its rows and later ones)."""
        width = len(self.table.counters)
        for key, (counters, version) in rows.items():
            if key not in self.rows:
                self._hold(key)
            row = self.rows[key] = Row(width, version=version)
            row.counters = row.written = counters
        self.stored_up_to = stored_up_to
        for index, (loaded_from, stored) in enumerate(rollups):
            for key, (counters, version) in stored.items():
                row = self.rollups[index][key] = Row(width, version=version)
                row.counters = counters
            self.rollups_loaded_from[index] = loaded_from

    def evict_minutes(self, horizon: int, next_offset: int) -> None:
        """Drop the rows of minutes before `horizon` that are clean and whose version is below
        `next_offset`: a record stored before a take-over and delivered again is known by its
        rows' versions (the ids remembered are those of older records), so a row stays until
        every record its version covers is past."""
        rows, dirty, held, minutes = self.rows, self.dirty, self.held, self.held_minutes
        staying = []  # (minute, keys of the rows that stay)
        while minutes and minutes[0] < horizon:
            minute = heapq.heappop(minutes)
            keys = held.pop(minute)
            kept = []
            for key in keys:
                if key in dirty or rows[key].version >= next_offset:
                    kept.append(key)
                else:
                    del rows[key]
            if len(kept) < len(keys) and minute > self.stored_up_to:
                self.stored_up_to = minute
            if kept:
                staying.append((minute, kept))
        for minute, keys in staying:
            held[minute] = keys
            heapq.heappush(minutes, minute)

    def evict(self, horizon: int, next_offset: int) -> None:
        """Drop the rows evict_minutes drops and rollups of buckets ended by `horizon`."""
        self.evict_minutes(horizon, next_offset)
        for grain, rows in zip(ROLLUP_GRAINS, self.rollups):
            ends = {bucket: grain.next(bucket) for bucket in {key[0] for key in rows}}
            old = [key for key in rows if ends[key[0]] <= horizon]
            for key in old:
                del rows[key]
            if old:
                self.rollups_evicted_up_to = max(self.rollups_evicted_up_to, max(key[0] for key in old))


class PartitionState:
    __slots__ = (
        "topic", "topic_id", "partition", "minutes", "recent",
        "next_offset", "stored_through", "max_window", "tracker", "last_record_wall_ms", "rebuild",
        "lifecycle", "lifecycle_rows", "stored_version", "last_record_ms", "resolved",
    )

    def __init__(self, topic, topic_id, partition, table, horizon_ms):
        self.topic = topic
        self.topic_id = topic_id
        self.partition = partition
        self.minutes = RowSet(table)  # the rows of the partition's own events
        self.recent = RecentIds(horizon_ms)
        self.next_offset = 0
        # Highest version found stored when the partition was taken over: records at or
        # below it were written before, so their rejections are not published again.
        self.stored_through = -1
        self.max_window = -1  # latest minute with a row of its own, in memory or stored
        # Overdue dossiers and feedback: service partitions only.
        self.tracker = OverdueTracker(horizon_ms) if table is SERVICE_MINUTE else None
        # Every item still open (carried-over and overdue counts), and the rows of the transitions
        # of their intervals (a receipt's reaches its due minute, days ahead): service partitions only.
        self.lifecycle = Lifecycle(horizon_ms) if table is SERVICE_MINUTE else None
        self.lifecycle_rows = RowSet(LIFECYCLE_MINUTE) if table is SERVICE_MINUTE else None
        self.stored_version = -1  # highest version of this partition's rows known stored
        self.last_record_ms = 0
        self.resolved: set = set()  # (kind, item_id) resolved by records this worker sees again
        self.last_record_wall_ms = 0
        # Set when a defect may have left the tracker inconsistent: the next record takes the
        # partition over again from what ClickHouse stores (after storing what is held).
        self.rebuild = False

    @property
    def row_sets(self) -> tuple:
        return (self.minutes,) if self.lifecycle_rows is None else (self.minutes, self.lifecycle_rows)

    def new_row(self, key: tuple) -> Row:
        """A row of its own not in memory: its minute may have a stored row to add to at the next write."""
        window = key[0]
        if window > self.max_window:
            self.max_window = window
        return self.minutes.new_row(key)


_RAW_TYPE, _RAW_PROVINCE, _RAW_AGENCY, _RAW_PROCEDURE, _RAW_OFFSET = (
    SERVICE_RAW_COLUMNS.index(name) for name in ("event_type", "province", "agency", "procedure_code", "source_offset"))
_LIFECYCLE_WIDTH = len(LIFECYCLE_MINUTE.counters)


def _add_transitions(row_set: RowSet, raw: list, marks: list) -> None:
    """Add the lifecycle transitions of new raw events (their marks, MARK_COLUMNS) to the rows of
    their minutes, as ClickHouse sums lifecycle_edges: under the item's province, agency and
    procedure (the event's own when the marks name none), counters in LIFECYCLE_COUNTERS order.
    A row whose stored version covers an event's record already holds its transitions."""
    rows = row_set.rows
    touched: dict = {}  # key -> [row or None, counters to add, stored version, any added]

    def count(at_ms: int, meta: tuple, counter: int, weight: int, offset: int) -> None:
        key = (at_ms // 60000 * 60, *meta)
        entry = touched.get(key)
        if entry is None:
            row = rows.get(key)
            entry = touched[key] = [row, [0] * _LIFECYCLE_WIDTH, -1 if row is None else row.version, False]
        if offset > entry[2]:
            entry[1][counter] += weight
            entry[3] = True

    for event, mark in zip(raw, marks):
        if mark is NO_MARKS_ROW:
            continue
        offset = event[_RAW_OFFSET]
        first = 0 if event[_RAW_TYPE].startswith("dossier.") else 4
        meta = mark[8:] if mark[8] else (event[_RAW_PROVINCE], event[_RAW_AGENCY], event[_RAW_PROCEDURE])
        if mark[1]:
            count(mark[0], meta, first, mark[1], offset)
        if mark[3]:
            count(mark[2], meta, first + 1, mark[3], offset)
        if mark[5]:
            count(mark[4], meta, first + 2, mark[5], offset)
        if mark[7]:
            count(mark[6], meta, first + 3, mark[7], offset)
    for key, (row, counts, _, added) in touched.items():
        if not added:  # its stored version covers every record that reached it
            continue
        if row is None:
            row = row_set.new_row(key)
        row.counters = list(map(add, row.counters, counts))
        row_set.dirty.add(key)


def _change(row: Row) -> list:
    """What a row's counters gained since they were last put in a snapshot."""
    return row.counters if row.written is None else list(map(sub, row.counters, row.written))


def alert_key(row) -> str:
    """The alerts-topic key of an alert row: its alert_id, and for a resolution `alert_id:resolved`
    (a worker taking over tells by key which messages of a partition are on the topic)."""
    return row[ALERT_ID] if row[STATUS] == "firing" else f"{row[ALERT_ID]}:resolved"


def alert_messages(rows) -> list:
    """(partition, key, JSON value) for the alerts topic, from alert rows (ALERT_COLUMNS). An alert
    goes to the partition numbered like its source partition, its resolution after it. The dossier
    or feedback id appears only as its keyed hash (`item_ref`)."""
    messages = []
    for row in rows:
        alert = dict(zip(ALERT_COLUMNS, row))
        message = {
            "alert_id": alert["alert_id"],
            "type": alert["type"],
            "status": alert["status"],
            "province": alert["province"],
            "agency": alert["agency"],
            "procedure_code": alert["procedure_code"] or None,
            "item_ref": alert["item_ref"],
            "due_at": _rfc3339(alert["due_ms"]),
            "detected_at": _rfc3339(alert["detected_ms"]),
            "replayed": bool(alert["replayed"]),
            "source": {"partition": alert["source_partition"], "offset": alert["source_offset"]},
        }
        if alert["status"] == "resolved":
            message["resolved_at"] = _rfc3339(alert["resolved_ms"])
        messages.append((alert["source_partition"], alert_key(row).encode(), msgspec.json.encode(message)))
    return messages


def _rfc3339(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _reason_label(reason: str) -> str:
    if reason.startswith("internal error"):
        return "internal_error"
    if "nested deeper than" in reason:
        return "too_deep"
    if "over the limit of" in reason:
        return "too_large"
    if reason.startswith("record timestamp") and "outside" in reason:
        return "invalid_record_timestamp"
    if reason.startswith(("record is", "item is", "record has no")):
        return "not_json"
    if reason.startswith("field 'event_type'"):
        return "unknown_type"
    if reason.startswith("field 'province': unknown"):
        return "unknown_province"
    if "in the future" in reason:
        return "future"
    if "-day retention" in reason:
        return "before_retention"
    if "belongs on topic" in reason:
        return "wrong_topic"
    if ": missing" in reason:
        return "missing_field"
    return "invalid_field"


class Processor:
    def __init__(self, settings, topic_ids: dict, sink: ClickHouseSink, pseudonym_key: bytes, provinces,
                 clock=time.time, replaying: bool = False, catalogue: Catalogue | None = None):
        self.settings = settings
        self.sink = sink
        self.topic_ids = topic_ids
        self.kinds = {settings.service_topic: "service", settings.security_topic: "security"}
        self.validator = Validator(provinces, int(settings.max_future_s * 1000), settings.retention_days)
        self.knows_agency = (catalogue or default_catalogue()).knows_agency
        self.pseudonymise = Pseudonymiser(pseudonym_key)
        self.horizon_ms = int(settings.dedup_horizon_s * 1000)
        self.memory_window_s = int(settings.memory_window_s)
        self.clock = clock
        self.partitions: dict = {}
        self.batch = WriteBatch()
        self.pending_record_ms: list = []
        self._last_eviction = self._last_purge = clock()
        self._purge_backlog = False  # the last purge round left items for the next
        self._last_purge_round = clock()  # when a purge round was last sent
        self.last_window_written = -1
        self.lookahead_ms = int(settings.alert_lookahead_s * 1000)
        self.idle_ms = int(settings.idle_watermark_s * 1000)
        self.replaying = replaying  # alerts raised by `opscentre replay` are marked, so nobody is paged twice
        self.unpublished: list = []  # stored alert rows (ALERT_COLUMNS) not yet on the alerts topic
        # {alert_id: offset} of alerts on the alerts topic partition from an offset on (set by the worker).
        self.published_since = lambda partition, offset: {}
        # Set by the worker while a snapshot is written in a thread: a partition rewound must
        # see every stored row, so it waits for that write first.
        self.wait_for_writes = lambda: None

    # -- records -------------------------------------------------------------------------

    def process(self, topic: str, partition: int, offset: int, record_ms: int, value: bytes | None) -> list:
        """Apply one record; returns dead letters as (key, value) pairs to publish (see process_records)."""
        return self.process_records(topic, partition, [Record(offset, record_ms, value)])

    def process_records(self, topic: str, partition: int, records) -> list:
        """Apply records of one partition (objects with `offset`, `timestamp` and `value`) in offset
        order, exactly as one at a time; returns dead letters as (key, value) pairs to publish.

        A record is applied whole or not at all: its effects are gathered first and applied at
        the end, so that a defect raising anything on the way rejects that record alone (as an
        internal error) and leaves the partition's state as it was.

        Records come in runs (see _run_end) applied together: their events planned in one pass,
        their look-ups in the partition's memory made at once, and then, record by record, what
        depends on order (open items, overdue alerts). Should anything raise inside a run of
        several, nothing of it is kept and its records are applied again one at a time.

        A take-over that cannot read ClickHouse raises Interrupted, saying how many were applied.

        The cyclic garbage collector pauses meanwhile: a run's decoded records and events (five or
        six tracked objects for each single-event record) are alive until the run ends, and each
        collection in between walked them all: a fifth to a third of the processor's time on them."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._process_records(topic, partition, records)
        finally:
            if collecting:
                gc.enable()

    def _process_records(self, topic: str, partition: int, records) -> list:
        letters: list = []
        position, count = 0, len(records)
        one_at_a_time_until = 0
        while position < count:
            first = records[position]
            state = self.partitions.get((topic, partition))
            if state is None or first.offset < state.next_offset or state.rebuild:
                try:
                    state = self._take_over(topic, partition, first.offset, first.timestamp)
                except StoreError as exc:
                    raise Interrupted(position, letters) from exc
            end = position + 1 if position < one_at_a_time_until else self._run_end(state, records, position)
            found = self._apply_run(state, records[position:end] if end - position > 1 else [first])
            if found is None:  # a run of several met a defect: again, one at a time
                one_at_a_time_until = end
                continue
            letters += found
            position = end
        return letters

    @staticmethod
    def _run_end(state, records, start: int) -> int:
        """The end of the run from `start`: records in offset order whose times share one tenth of the
        de-duplication horizon. Within a tenth the partition's memories of ids and closings neither
        seal nor forget anything, so records checked together decide exactly as one by one."""
        tenth_ms = state.recent.bucket_ms
        previous = records[start].offset - 1
        tenth = None
        for end in range(start, len(records)):
            record = records[end]
            if record.offset <= previous:  # a rewind: taken over first
                return end
            previous = record.offset
            record_ms = record.timestamp
            if MIN_MS <= record_ms <= MAX_MS:
                if tenth is None:
                    tenth = record_ms // tenth_ms
                elif record_ms // tenth_ms != tenth:
                    return end
        return len(records)

    def _apply_run(self, state, run: list) -> list | None:
        """Apply a run of records; returns their dead letters, or None when a run of several met a
        defect (nothing of it applied; the caller applies its records one at a time)."""
        now_ms = int(self.clock() * 1000)
        alerts_before = len(self.batch.alerts)
        service = state.minutes.table is SERVICE_MINUTE
        try:
            decoded = [self._decode(record, now_ms) for record in run]
            plan = (self._plan_service if service else self._plan_security)(state, run, decoded)
            marks = self._track(state, run, decoded, plan) if service else None
        except ProcessorFailure:
            raise
        except Exception as exc:  # a defect; bad input never gets here
            del self.batch.alerts[alerts_before:]
            if len(run) > 1:
                return None
            decoded = [(None, [self._internal_error(state, run[0].offset, run[0].value, exc)])]
            plan = marks = None
        if plan is not None:
            try:
                self._commit_plan(state, plan, marks)
            except Exception as exc:
                raise ProcessorFailure(f"{state.topic}[{state.partition}] offsets {run[0].offset}-{run[-1].offset}: "
                                       f"could not apply planned records ({type(exc).__name__}); stopping so that "
                                       "they are redelivered") from exc
        return self._account(state, run, decoded, now_ms)

    def _decode(self, record, now_ms: int) -> tuple:
        """(Decoded, or None when the record time itself is rejected; rejections of the record)."""
        record_ms, value = record.timestamp, record.value
        if not MIN_MS <= record_ms <= MAX_MS:
            return None, [Rejection(None, f"record timestamp {record_ms} ms is outside {YEARS} "
                                   "(the producer sets it: CreateTime)", value or b"")]
        if record_ms > now_ms + self.validator.max_future_ms:
            return None, [Rejection(None, f"record timestamp {_rfc3339(record_ms)} is more than "
                                   f"{self.validator.max_future_ms // 60000} minutes in the future "
                                   "(check the producer's clock)", value or b"")]
        decoded = self.validator.decode(value, now_ms)
        return decoded, list(decoded.rejections)

    def _account(self, state, run: list, decoded: list, now_ms: int) -> list:
        """The records' place in the partition, their metrics, and their dead letters."""
        letters = []
        stored_through = state.stored_through
        last_record_ms = state.last_record_ms
        replayed = 0
        for record, (events, rejections) in zip(run, decoded):
            record_ms = record.timestamp
            already_stored = record.offset <= stored_through
            if already_stored:
                replayed += 1
            elif events is not None:
                self.pending_record_ms.append(record_ms)
            if MIN_MS <= record_ms <= MAX_MS and record_ms > last_record_ms:
                last_record_ms = record_ms
            if rejections and not already_stored:
                letters += self._reject(state, record.offset, record_ms, rejections)
        state.last_record_ms = last_record_ms
        state.next_offset = run[-1].offset + 1
        state.last_record_wall_ms = now_ms
        _child(RECORDS, state.topic).inc(len(run))
        if replayed:
            REPLAYED.inc(replayed)
        return letters

    def _misrouted(self, event, index, rejections, expected_kind) -> None:
        actual = "security" if expected_kind == "service" else "service"
        reason = f"event type {event.__struct_config__.tag!r} belongs on topic {getattr(self.settings, actual + '_topic')}"
        rejections.append(Rejection(index, reason, msgspec.json.encode(event)))

    @staticmethod
    def _check_ids(recent, run: list, decoded: list, security: bool) -> tuple:
        """(fresh, hashes, record times) of the run's events in order, against the partition's memory
        of ids: the ids of the events this topic takes; None for the others (misrouted, rejected)."""
        ids, times = [], []
        for record, (events, _) in zip(run, decoded):
            if events is not None:
                record_ms = record.timestamp
                for event in events.events:
                    ids.append(event.event_id if (type(event) is SecurityAlert) is security else None)
                    times.append(record_ms)
        fresh, hashes = recent.check(ids, times)
        return fresh, hashes, times

    def _plan_service(self, state, run: list, decoded: list) -> "_Plan":
        rows, recent = state.minutes.rows, state.recent
        topic_id, partition = state.topic_id, state.partition
        stored_through = state.stored_through
        # row key -> [row or None (new), counters to add, agency not in the catalogue, stored version]
        touched: dict = {}
        raw = []
        # Per record: receipts (OpenItem) and closings (kind, item id, occurred, due) for the tracker,
        # and (index of the raw row or None, event) for the lifecycle: events of rows already applied
        # too, whose effect on the rows is stored but whose items must still be opened or closed in memory.
        items_of, lifecycle_of = [], []
        accepted = {}
        duplicates = 0
        unknown_agency: dict = {}
        knows_agency = self.knows_agency
        fresh, hashes, times = self._check_ids(recent, run, decoded, security=False)
        position = 0
        for record, (events, rejections) in zip(run, decoded):
            items, lifecycle_events = [], []
            items_of.append(items)
            lifecycle_of.append(lifecycle_events)
            if events is None:
                continue
            offset, record_ms = record.offset, record.timestamp
            counted_duplicates = offset > stored_through
            for event, index, occurred_ms in zip(events.events, events.indexes, events.occurred_ms):
                is_new = fresh[position]
                position += 1
                cls = type(event)
                if cls is SecurityAlert:
                    self._misrouted(event, index, rejections, "service")
                    continue
                if not is_new:
                    if counted_duplicates:
                        duplicates += 1
                    continue
                window = occurred_ms // 60000 * 60
                key = (window, event.province, event.agency)
                entry = touched.get(key)
                if entry is None:
                    row = rows.get(key)
                    if row is None:
                        entry = touched[key] = [None, [0] * N_SERVICE, not knows_agency(event.province, event.agency), -1]
                    else:
                        entry = touched[key] = [row, [0] * N_SERVICE, row.unknown_agency, row.version]
                if offset <= entry[3]:  # the row's stored version covers this record
                    if cls in _LIFECYCLE_EVENTS:
                        lifecycle_events.append((None, _lifecycle_event(event, occurred_ms)))
                    continue
                c = entry[1]
                c[0] += 1
                if entry[2]:
                    unknown_agency[event.province] = unknown_agency.get(event.province, 0) + 1
                due_ms = on_time = amount = 0
                item_id = procedure = service_level = channel = result = method = direction = applicant = ""
                digitized = satisfied = None
                if cls is DossierReceived:
                    c[RECEIVED] += 1
                    service_level = event.service_level
                    if service_level == "full_online":
                        c[RECEIVED_FULL_ONLINE] += 1
                    elif service_level == "partial_online":
                        c[RECEIVED_PARTIAL_ONLINE] += 1
                    item_id, procedure, channel = event.dossier_id, event.procedure_code, event.channel
                    due_ms = to_millis(event.due_at)
                    if event.applicant_id is not None:
                        applicant = self.pseudonymise(event.applicant_id)
                    items.append(open_item((due_ms, "dossier", item_id, event.province, event.agency, procedure)))
                    lifecycle_events.append((len(raw), ("dossier", item_id, occurred_ms, due_ms, event.province,
                                                        event.agency, procedure)))
                elif cls is DossierCompleted:
                    c[COMPLETED] += 1
                    due_ms = to_millis(event.due_at)
                    if occurred_ms <= due_ms:
                        on_time = 1
                        c[COMPLETED_ON_TIME] += 1
                    item_id, procedure, result = event.dossier_id, event.procedure_code, event.result
                    digitized = None if event.digitized is None else int(event.digitized)
                    items.append(("dossier", item_id, occurred_ms, due_ms))
                    lifecycle_events.append((len(raw), ("dossier", item_id, occurred_ms)))
                elif cls is PaymentCompleted:
                    c[PAYMENTS] += 1
                    amount = event.amount_vnd
                    c[PAYMENTS_VND] += amount
                    method = event.method
                    if method == "online":
                        c[PAYMENTS_ONLINE] += 1
                        c[PAYMENTS_ONLINE_VND] += amount
                    item_id = event.dossier_id
                elif cls is DossierCancelled:
                    c[CANCELLED] += 1
                    item_id, procedure = event.dossier_id, event.procedure_code
                    items.append(("dossier", item_id, occurred_ms, None))
                    lifecycle_events.append((len(raw), ("dossier", item_id, occurred_ms)))
                elif cls is FeedbackReceived:
                    c[FEEDBACK_RECEIVED] += 1
                    item_id, channel = event.feedback_id, event.channel
                    due_ms = to_millis(event.due_at)
                    items.append(open_item((due_ms, "feedback", item_id, event.province, event.agency, "")))
                    lifecycle_events.append((len(raw), ("feedback", item_id, occurred_ms, due_ms, event.province,
                                                        event.agency, "")))
                elif cls is FeedbackResolved:
                    c[FEEDBACK_RESOLVED] += 1
                    due_ms = to_millis(event.due_at)
                    if occurred_ms <= due_ms:
                        on_time = 1
                        c[FEEDBACK_RESOLVED_ON_TIME] += 1
                    if event.satisfied:
                        c[FEEDBACK_SATISFIED] += 1
                    satisfied = None if event.satisfied is None else int(event.satisfied)
                    item_id = event.feedback_id
                    items.append(("feedback", item_id, occurred_ms, due_ms))
                    lifecycle_events.append((len(raw), ("feedback", item_id, occurred_ms)))
                else:  # DocumentExchanged
                    direction = event.direction
                    c[DOCUMENTS_SENT if direction == "sent" else DOCUMENTS_RECEIVED] += 1
                    item_id = event.document_id
                accepted[cls] = accepted.get(cls, 0) + 1
                raw.append((
                    event.event_id, cls.__struct_config__.tag, occurred_ms, event.province,
                    event.agency, event.source, item_id, procedure, service_level, channel, due_ms, on_time, result,
                    digitized, amount, method, satisfied, direction, applicant, topic_id, partition, offset,
                    -1 if index is None else index, record_ms,
                ))
        return _Plan(touched, N_SERVICE, raw, self.batch.service_raw, items_of, hashes, fresh, times, accepted,
                     duplicates, unknown_agency, lifecycle_of)

    def _plan_security(self, state, run: list, decoded: list) -> "_Plan":
        rows, recent = state.minutes.rows, state.recent
        topic_id, partition = state.topic_id, state.partition
        stored_through = state.stored_through
        touched: dict = {}
        raw = []
        accepted = 0
        duplicates = 0
        fresh, hashes, times = self._check_ids(recent, run, decoded, security=True)
        position = 0
        for record, (events, rejections) in zip(run, decoded):
            if events is None:
                continue
            offset, record_ms = record.offset, record.timestamp
            counted_duplicates = offset > stored_through
            for event, index, occurred_ms in zip(events.events, events.indexes, events.occurred_ms):
                is_new = fresh[position]
                position += 1
                if type(event) is not SecurityAlert:
                    self._misrouted(event, index, rejections, "security")
                    continue
                if not is_new:
                    if counted_duplicates:
                        duplicates += 1
                    continue
                window = occurred_ms // 60000 * 60
                technique = event.technique or ""
                key = (window, event.province, event.category, event.severity, event.action, event.sensor, technique)
                entry = touched.get(key)
                if entry is None:
                    row = rows.get(key)
                    entry = touched[key] = [row, [0] * N_SECURITY, False, -1 if row is None else row.version]
                if offset <= entry[3]:
                    continue
                c = entry[1]
                c[0] += 1
                c[1] += event.count
                accepted += 1
                raw.append((
                    event.event_id, occurred_ms, event.province, event.agency, event.source,
                    event.category, event.severity, event.action, event.sensor, event.dst_asset,
                    event.src_ip or "", event.rule_id or "", technique, event.count,
                    topic_id, partition, offset, -1 if index is None else index, record_ms,
                ))
        return _Plan(touched, N_SECURITY, raw, self.batch.security_raw, (), hashes, fresh, times,
                     {SecurityAlert: accepted} if accepted else {}, duplicates, {}, ())

    def _track(self, state, run: list, decoded: list, plan: "_Plan") -> list:
        """Record by record, in order: the receipts and closings through the partition's open items
        (the marks of each raw row, MARK_COLUMNS), then the overdue tracker and its alerts. Should it
        raise, the partition is rebuilt from what ClickHouse stores before its next record."""
        lifecycle, tracker = state.lifecycle, state.tracker
        marks_rows = [NO_MARKS_ROW] * len(plan.raw)
        try:
            if len(run) > 1:
                keys = [item_key(event[0], event[1]) for events in plan.lifecycle_events for _, event in events]
                lifecycle.prefetch(keys)
                tracker.prefetch(keys)
            for record, (events, _), items, lifecycle_events in zip(run, decoded, plan.items, plan.lifecycle_events):
                if events is None:
                    continue
                offset, record_ms = record.offset, record.timestamp
                if lifecycle_events:
                    results = lifecycle.apply([event for _, event in lifecycle_events], record_ms)
                    for (raw_index, event), (marks, item) in zip(lifecycle_events, results):
                        if item is not None and item.alerted:
                            self._resolve(state, event[0], event[1], item, event[2], offset)
                        if raw_index is None or marks is NO_MARKS:
                            continue
                        # A closing counts under its item's province, agency and procedure (the receipt's).
                        meta = ("", "", "") if item is None else (item.province, item.agency, item.procedure_code)
                        marks_rows[raw_index] = (*marks, *meta)
                for item in items:
                    if type(item) is OpenItem:
                        tracker.opened(item)
                    else:
                        tracker.closed_item(*item)
                tracker.settle(record_ms)
                if events.occurred_ms:
                    self._overdue(state, min(max(events.occurred_ms), record_ms), offset)
        except Exception:
            state.rebuild = True
            raise
        finally:
            if len(run) > 1:  # the look-ups belong to this run
                lifecycle.prefetch([])
                tracker.prefetch([])
        return marks_rows

    def _commit_plan(self, state, plan: "_Plan", marks) -> None:
        """The plain end of applying records: rows, raw events, the ids accepted, metrics."""
        dirty = state.minutes.dirty
        for key, (row, counts, unknown, _) in plan.touched.items():
            if not counts[0]:  # every event for it was already applied
                continue
            if row is None:
                row = state.new_row(key)
                row.unknown_agency = unknown
            row.counters = list(map(add, row.counters, counts))
            dirty.add(key)
        plan.raw_table.extend(plan.raw)
        if marks is not None:
            self.batch.service_marks.extend(marks)
            _add_transitions(state.lifecycle_rows, plan.raw, marks)
        state.recent.remember(plan.hashes, plan.fresh, plan.times)
        for cls, count in plan.accepted.items():
            _child(EVENTS_VALID, cls.__struct_config__.tag).inc(count)
        if plan.duplicates:
            DUPLICATES.inc(plan.duplicates)
        for province, count in plan.unknown_agency.items():
            _child(UNKNOWN_AGENCY, province).inc(count)

    def _internal_error(self, state, offset, value, exc) -> Rejection:
        """The record is rejected whole; the stack is logged once, without identifiers."""
        INTERNAL_ERRORS.labels(state.topic).inc()
        message = scrub_personal(str(exc), value)
        if len(message) > 300:
            message = message[:300] + "…"
        reason = f"internal error: {type(exc).__name__}: {message}"
        log.error("%s[%d] offset %d rejected, %s\n%s", state.topic, state.partition, offset, reason,
                  "".join(traceback.format_tb(exc.__traceback__)).rstrip())
        return Rejection(None, reason, value or b"")

    # -- overdue items -------------------------------------------------------------------

    def _overdue(self, state, watermark: int, offset: int) -> None:
        for item in state.tracker.advance(watermark):
            self._alert(state, item, offset)

    def _alert(self, state, item: OpenItem, offset: int) -> None:
        kind_type = ALERT_TYPES[item.kind]
        item_ref = self.pseudonymise(f"{item.kind}:{item.item_id}")
        OVERDUE_ALERTS.labels(kind_type, str(self.replaying).lower()).inc()
        watermark = state.tracker.watermark
        row = (f"{kind_type}:{item_ref[:32]}", kind_type, item.kind, item.item_id, item_ref, item.province,
               item.agency, item.procedure_code, item.due_ms, watermark, int(self.replaying), 0, -1,
               state.topic_id, state.partition, offset, "firing", 0)
        self.batch.alerts.append(row)
        if not state.lifecycle.mark_alerted(item.kind, item.item_id, watermark):
            # Closed (late) before the watermark reached its due time: over as it starts, it pages nobody.
            self.batch.alerts.append(row[:STATUS] + ("resolved", watermark))

    def _resolve(self, state, kind: str, item_id: str, item, resolved_ms: int, offset: int) -> None:
        """An alerted item closed: its alert is resolved (once: a resolution stored by a record the
        worker sees again after a take-over is not made again). It carries its alert's detected_at."""
        if (kind, item_id) in state.resolved:
            return
        kind_type = ALERT_TYPES[kind]
        item_ref = self.pseudonymise(f"{kind}:{item_id}")
        self.batch.alerts.append((
            f"{kind_type}:{item_ref[:32]}", kind_type, kind, item_id, item_ref, item.province, item.agency,
            item.procedure_code, item.due_ms, item.alerted, int(self.replaying), 0, -1,
            state.topic_id, state.partition, offset, "resolved", resolved_ms))

    def tick(self) -> None:
        """Advance idle live partitions to the wall clock (less a grace period for events in flight).

        Without it a quiet partition's watermark stands still and nothing goes overdue. Only
        partitions whose watermark is within minutes of the wall clock are moved: a replay of
        history keeps its own time.
        """
        now_ms = int(self.clock() * 1000)
        for state in self.partitions.values():
            tracker = state.tracker
            if tracker is None or tracker.watermark < 0 or state.rebuild:
                continue
            if now_ms - state.last_record_wall_ms >= self.idle_ms and now_ms - tracker.watermark <= 300_000:
                alerts_before = len(self.batch.alerts)
                try:
                    self._overdue(state, now_ms - self.idle_ms, state.next_offset - 1)
                except Exception as exc:
                    del self.batch.alerts[alerts_before:]
                    self._tracker_failed(state, exc)

    def _tracker_failed(self, state, exc) -> None:
        """A defect in the overdue tracker outside any record: the partition's state is rebuilt
        from ClickHouse before its next record, as on a take-over."""
        INTERNAL_ERRORS.labels(state.topic).inc()
        state.rebuild = True
        log.error("%s[%d]: overdue tracking failed, rebuilding the partition's state before its next record: "
                  "%s\n%s", state.topic, state.partition, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)).rstrip())

    def take_unpublished(self) -> list:
        """Stored alerts to put on the alerts topic; call mark_published() once they are there."""
        rows, self.unpublished = self.unpublished, []
        return rows

    def mark_published(self, rows, offsets) -> None:
        """Record that `rows` are on the alerts topic at `offsets` (stored with the next snapshot)."""
        self.batch.alerts.extend(
            row[:PUBLISHED] + (1, offset) + row[PUBLISHED + 2:] for row, offset in zip(rows, offsets)
        )

    def has_alerts(self) -> bool:
        return bool(self.batch.alerts)

    def _load_items(self) -> None:
        """After a snapshot is stored: bring open items the watermark is nearing into memory."""
        for state in self.partitions.values():
            tracker = state.tracker
            if tracker is None or state.rebuild or not tracker.needs_load(self.lookahead_ms):
                continue
            up_to = tracker.watermark + self.lookahead_ms
            try:
                stored = self.sink.load_open_items(state.topic_id, state.partition, tracker.loaded_to, up_to)
            except StoreError as exc:
                log.warning("could not load open items of partition %d (will retry): %s", state.partition, exc)
                continue
            alerts_before = len(self.batch.alerts)
            try:
                tracker.load([OpenItem(due, kind, item, *rest) for kind, item, due, *rest in stored], up_to)
                self._overdue(state, tracker.watermark, state.next_offset - 1)
            except Exception as exc:
                del self.batch.alerts[alerts_before:]
                self._tracker_failed(state, exc)
        TRACKED_ITEMS.set(sum(len(s.tracker) for s in self.partitions.values() if s.tracker is not None))

    def _reject(self, state, offset, record_ms, rejections) -> list:
        letters = []
        rejected_append = self.batch.rejected.append
        stored_ms = min(max(record_ms, MIN_MS), MAX_MS)  # a rejected record's own time may be out of range
        for index, reason, original in rejections:
            EVENTS_REJECTED.labels(_reason_label(reason), state.topic).inc()
            item_index = -1 if index is None else index
            rejected_append((
                state.topic, state.topic_id, state.partition, offset, item_index, stored_ms,
                stored_ms // 1000, reason, stored_original(original, self.pseudonymise), len(original),
                self.pseudonymise.digest(original),
            ))
            key = f"{state.topic}:{state.partition}:{offset}:{item_index}".encode()
            letters.append((key, dead_letter(reason, state.topic, state.partition, offset, index, record_ms, original)))
        return letters

    # -- ownership -----------------------------------------------------------------------

    def _take_over(self, topic: str, partition: int, offset: int, record_ms: int) -> PartitionState:
        """Load a partition's stored state before its first record (or after a rewind)."""
        if (topic, partition) in self.partitions:
            # A rewind: the snapshot being written may hold this partition's rows, and what is
            # reloaded must include them. A partition taken over fresh has none in it (a revoked
            # one is released only once its rows are stored): no need to wait for the write.
            self.wait_for_writes()
            self.flush()
        kind = self.kinds.get(topic)
        if kind is None:
            raise ValueError(f"record from unexpected topic {topic}")
        table = SERVICE_MINUTE if kind == "service" else SECURITY_MINUTE
        topic_id = self.topic_ids[topic]
        snapshot = self.sink.load_partition(table, topic_id, partition, offset, record_ms, self.horizon_ms)
        # Rows a worker that died stored past its last commit may lack their rollups.
        self.sink.recompute_partition_rollups(table, topic_id, partition, offset)
        state = PartitionState(topic, topic_id, partition, table, self.horizon_ms)
        # No row of its own is stored after its latest stored minute: the rollups' buckets are
        # loaded from the one holding it on.
        state.minutes.load(snapshot.rows, snapshot.max_window, self._stored_rollups(
            state, table, snapshot.max_window) if snapshot.max_window >= 0 else [])
        for key, row in state.minutes.rows.items():
            if table is SERVICE_MINUTE:
                row.unknown_agency = not self.knows_agency(key[1], key[2])
            state.stored_through = max(state.stored_through, row.version)
        state.max_window = snapshot.max_window
        state.recent.preload(snapshot.seen)
        state.next_offset = offset
        if state.lifecycle is not None:
            open_items, closings = self.sink.load_open_state(topic_id, partition, offset, record_ms - self.horizon_ms)
            state.lifecycle.load(open_items)
            state.lifecycle.remember_closings(closings)
            # Transitions a worker that died stored past its last commit, without their rows.
            recomputed = self.sink.recompute_partition_lifecycle(topic_id, partition, offset)
            self._load_lifecycle_rows(state, offset, recomputed)
        if state.tracker is not None:
            alerted, unpublished, closed, last_published = self.sink.load_alert_state(
                topic_id, partition, offset, record_ms - self.horizon_ms)
            state.tracker.remember_alerted(alerted)
            state.tracker.closed.preload(closed)
            if unpublished:
                unpublished.sort(key=lambda row: (row[SOURCE_OFFSET], row[STATUS] == "resolved"))  # firing first
                # Stored, not known to be published: the worker may have died between the two.
                # Whatever reached the alerts topic after the last known one is not sent again.
                sent = self.published_since(partition, last_published + 1)
                self.mark_published([row for row in unpublished if alert_key(row) in sent],
                                    [sent[alert_key(row)] for row in unpublished if alert_key(row) in sent])
                self.unpublished.extend(row for row in unpublished if alert_key(row) not in sent)
            state.resolved = set(self.sink.resolved_since(topic_id, partition, offset))
        self.partitions[(topic, partition)] = state
        PARTITIONS.set(len(self.partitions))
        log.info(
            "took over %s[%d] at offset %d: %d stored rows ahead, %d remembered ids, stored through %d",
            topic, partition, offset, len(snapshot.rows), len(snapshot.seen), state.stored_through,
        )
        return state

    def release(self, topic_partitions) -> None:
        """Forget partitions this worker no longer owns (their state is reloaded on return)."""
        for tp in topic_partitions:
            self.partitions.pop(tp, None)
        PARTITIONS.set(len(self.partitions))

    # -- flushing ------------------------------------------------------------------------

    def pending_events(self) -> int:
        return len(self.batch.service_raw) + len(self.batch.security_raw)

    def has_pending(self) -> bool:
        return bool(self.pending_record_ms or self.batch.alerts) or any(
            s.minutes.dirty for s in self.partitions.values())

    def flush(self) -> int:
        """Write everything processed so far; raises StoreError and keeps it all for a retry."""
        snapshot = self.prepare()
        written = self.sink.write(snapshot.batch)
        self.commit(snapshot)
        return written

    def prepare(self) -> "Snapshot":
        """Freeze what is processed so far into rows to write.

        The worker writes a snapshot in a thread while it processes the next
        records, and calls commit() once it is stored. A snapshot's rows are
        cumulative counts at a version, so retrying its write is always safe.
        Snapshots must be committed in order, each before the next is prepared.
        """
        batch = self.batch
        versions = []
        latest_window = -1
        for state in self.partitions.values():
            if state.tracker is not None:
                state.tracker.snapshot_taken()
            if not state.minutes.dirty:  # lifecycle transitions come with rows of its own
                continue
            version = state.next_offset - 1
            for row_set in state.row_sets:
                if not row_set.dirty:
                    continue
                keys = row_set.dirty
                written = self._write_rows(state, row_set, keys, version, batch)
                versions.append((state, row_set, version, keys))
                if row_set is state.minutes and written > latest_window:
                    latest_window = written
        snapshot = Snapshot(batch, versions, self.pending_record_ms, latest_window)
        self.batch = WriteBatch()
        self.pending_record_ms = []
        return snapshot

    def _write_rows(self, state: PartitionState, row_set: RowSet, keys: set, version: int, batch: WriteBatch) -> int:
        """Put a row set's dirty rows and their hour, day and month rows in the batch, at `version`;
        returns the latest minute written."""
        rows = row_set.rows
        changes = [(key, _change(rows[key])) for key in keys]  # before stored bases are added
        self._add_stored(state, row_set.table, rows, keys)
        append = getattr(batch, row_set.table.name).append
        topic_id, partition = state.topic_id, state.partition
        latest = -1
        for key in keys:
            row = rows[key]
            append((*key, topic_id, partition, version, *row.counters))
            row.written = row.counters
            if key[0] > latest:
                latest = key[0]
        row_set.dirty = set()
        self._roll_up(state, row_set, changes, version, batch)
        return latest

    def _add_stored(self, state: PartitionState, table, rows: dict, keys) -> None:
        """Add to each of the rows of `keys` ({key: Row} of `table`) that may have a stored row not in
        memory that stored row's counts, read by key, and take its version."""
        missing = [key for key in keys if rows[key].needs_base]
        if not missing:
            return
        stored = self.sink.fetch_rows(table, state.topic_id, state.partition, missing)
        for key in missing:
            row = rows[key]
            if key in stored:
                counters, version = stored[key]
                row.counters = list(map(add, row.counters, counters))
                row.version = version
            row.needs_base = False

    def _stored_rollups(self, state: PartitionState, table, minute: int) -> list:
        """Per grain, (the bucket holding `minute`, the stored rows of that bucket and later ones): what
        the stream goes on adding to after a take-over, read once instead of row by row."""
        stored = []
        for grain in ROLLUP_GRAINS:
            bucket = grain.bucket(minute)
            stored.append((bucket, self.sink.load_rows(at_grain(table, grain), state.topic_id, state.partition, bucket)))
        return stored

    def _load_lifecycle_rows(self, state: PartitionState, offset: int, recomputed: list) -> None:
        """The stored lifecycle rows a resuming worker adds to: every row from a little before the
        partition's latest stored minute on (the due minutes of the items open are days ahead), and
        those stored at or past its first offset. Older ones are read back when a transition reaches
        them."""
        if state.max_window >= 0:
            since = max(0, state.max_window - self.memory_window_s)
            since -= since % 60
        elif recomputed:  # no row of its own stored: its only lifecycle rows are those just recomputed
            since = min(recomputed)
        else:
            return
        state.lifecycle_rows.load(
            self.sink.load_rows(LIFECYCLE_MINUTE, state.topic_id, state.partition, since, offset), since - 1,
            self._stored_rollups(state, LIFECYCLE_MINUTE, since))

    def _roll_up(self, state: PartitionState, row_set: RowSet, changes: list, version: int, batch: WriteBatch) -> None:
        """Add the minute rows' changes to their hour rows, the hour rows' changes to their day rows,
        and those to their month rows (a backfill's snapshot touches a minute row per event or so,
        and far fewer hour rows), and put those rows in the batch. A bucket that may have stored
        rows not in memory gets them added first, as minute rows do."""
        topic_id, partition = state.topic_id, state.partition
        for index, (grain, rows) in enumerate(zip(ROLLUP_GRAINS, row_set.rollups)):
            summed: dict = {}  # coarse key -> the sum of its finer rows' changes: the next grain's input
            buckets: dict = {}
            for key, change in changes:
                bucket = buckets.get(key[0])
                if bucket is None:
                    bucket = buckets[key[0]] = grain.bucket(key[0])
                coarse_key = (bucket, *key[1:])
                total = summed.get(coarse_key)
                summed[coarse_key] = change if total is None else list(map(add, total, change))
            touched = {}
            for coarse_key, change in summed.items():
                row = rows.get(coarse_key)
                if row is None:
                    row = row_set.new_coarse_row(index, coarse_key)
                row.counters = list(map(add, row.counters, change))
                touched[coarse_key] = row
            changes = summed.items()
            table = at_grain(row_set.table, grain)
            self._add_stored(state, table, touched, touched)
            batch.rollups.setdefault(table.name, []).extend(
                (*key, topic_id, partition, version, *row.counters) for key, row in touched.items())

    def commit(self, snapshot: "Snapshot") -> None:
        """Record that a snapshot is stored: its rows' versions now cover its records."""
        now = self.clock()
        observe_many(LATENCY, [max(0.0, now - record_ms / 1000) for record_ms in snapshot.record_ms])
        for state, row_set, version, keys in snapshot.versions:
            if version > state.stored_version:
                state.stored_version = version
            rows = row_set.rows
            for key in keys:
                row = rows.get(key)
                if row is not None and version > row.version:
                    row.version = version
        self.unpublished.extend(row for row in snapshot.batch.alerts if not row[PUBLISHED])
        self._load_items()
        if snapshot.latest_window > self.last_window_written:
            self.last_window_written = snapshot.latest_window
            LAST_WINDOW.set(snapshot.latest_window)
        if now - self._last_eviction >= EVICT_EVERY_S:
            self._evict()
            self._last_eviction = now
        else:  # a backfill runs through hours of minutes between two evictions
            self._evict(minutes_only=True)
        self._purge_open_items(now)

    def _purge_open_items(self, now: float) -> None:
        """Hourly, items closed before what is stored, by closings older than the horizon, leave open_items:
        a take-over rebuilds its open items from what is left (the backlog, and the last hour).
        A round takes a bounded number of items (ClickHouseSink.purge_open_items); after a backlog
        (a worker's first hour over a long history, a backfill) rounds follow each other until it is gone."""
        if now - self._last_purge < (PURGE_BACKLOG_EVERY_S if self._purge_backlog else PURGE_EVERY_S):
            return
        self._last_purge = now
        purges = [OpenItemsPurge(state.topic_id, state.partition, state.stored_version,
                                 state.last_record_ms - self.horizon_ms)
                  for state in self.partitions.values() if state.lifecycle is not None and state.stored_version >= 0]
        if not purges:
            return
        try:
            purged = self.sink.purge_open_items(purges)
        except StoreError as exc:
            log.warning("could not purge the open items of partitions %s (will retry): %s",
                        ", ".join(str(purge.partition) for purge in purges), exc)
            return
        if purged is None:  # another worker's purge running now, or a mutation stuck since the last round
            if not self._purge_backlog or now - self._last_purge_round >= PURGE_EVERY_S:
                self._purge_backlog = False  # a stuck mutation is retried hourly, as any
                log.warning("a mutation of open_items has not finished (see system.mutations); "
                            "this purge waits for the next round")
            return  # else the round before's mutation is still running: expected, retried soon
        self._last_purge_round = now
        self._purge_backlog = not purged.complete

    def _evict(self, minutes_only: bool = False) -> None:
        """Drop clean rows of minutes long past (a late event reloads them from ClickHouse) and,
        unless `minutes_only`, the hour, day and month rows ended by then and the alerted items past the horizon."""
        for state in self.partitions.values():
            horizon = state.max_window - self.memory_window_s
            for row_set in state.row_sets:  # the lifecycle rows of due minutes ahead stay
                if minutes_only:
                    row_set.evict_minutes(horizon, state.next_offset)
                else:
                    row_set.evict(horizon, state.next_offset)
            if minutes_only:
                continue
            if state.tracker is not None:
                state.tracker.forget_alerted()
                WATERMARK.labels(str(state.partition)).set(max(0, state.tracker.watermark) / 1000)

