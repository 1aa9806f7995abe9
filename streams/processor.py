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

import base64
import logging
import time

import msgspec
from prometheus_client import Counter, Gauge, Histogram

from opscentre.events import (
    DocumentExchanged, DossierCancelled, DossierCompleted, DossierReceived, FeedbackReceived,
    FeedbackResolved, PaymentCompleted, SecurityAlert, Validator, pseudonymise, to_millis,
)
from opscentre.measures import SECURITY_COUNTERS, SERVICE_COUNTERS
from sinks.clickhouse_sink import SECURITY_MINUTE, SERVICE_MINUTE, ClickHouseSink, WriteBatch

from .dedup import RecentIds

log = logging.getLogger(__name__)

RECORDS = Counter("opscentre_stream_records_total", "Kafka records consumed", ["topic"])
EVENTS_VALID = Counter("opscentre_stream_events_valid_total", "Valid events accepted", ["event_type"])
EVENTS_REJECTED = Counter("opscentre_stream_events_rejected_total", "Records or items sent to the dead-letter topic", ["reason"])
DUPLICATES = Counter("opscentre_stream_duplicates_dropped_total", "Events dropped as duplicates of an event_id within the horizon")
REPLAYED = Counter("opscentre_stream_records_already_applied_total", "Records redelivered whose effect was already stored")
LATENCY = Histogram(
    "opscentre_stream_end_to_end_seconds", "From record produced to its rows written in ClickHouse",
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
)
LAST_WINDOW = Gauge("opscentre_stream_last_window_written_seconds", "Start of the latest minute written (epoch s)")
PARTITIONS = Gauge("opscentre_stream_partitions_owned", "Source partitions with state in this worker")

S = {name: index for index, name in enumerate(SERVICE_COUNTERS)}
N_SERVICE = len(SERVICE_COUNTERS)
N_SECURITY = len(SECURITY_COUNTERS)
EVICT_EVERY_S = 60.0


class Row:
    """One (minute, dimensions) row of a partition: counts and the version stored in ClickHouse."""

    __slots__ = ("counters", "version", "needs_base")

    def __init__(self, width: int, version: int = -1, needs_base: bool = False):
        self.counters = [0] * width
        self.version = version  # highest source offset whose effect is stored (-1: nothing known)
        self.needs_base = needs_base  # stored counts may exist and must be added before writing


class PartitionState:
    __slots__ = (
        "topic", "topic_id", "partition", "table", "rows", "dirty", "recent",
        "next_offset", "stored_through", "max_window",
    )

    def __init__(self, topic, topic_id, partition, table, horizon_ms):
        self.topic = topic
        self.topic_id = topic_id
        self.partition = partition
        self.table = table
        self.rows: dict = {}
        self.dirty: set = set()
        self.recent = RecentIds(horizon_ms)
        self.next_offset = 0
        # Highest version found stored when the partition was taken over: records at or
        # below it were written before, so their rejections are not published again.
        self.stored_through = -1
        self.max_window = -1  # latest minute that has, or may have, a stored row


def _reason_label(reason: str) -> str:
    if reason.startswith("record is not") or reason.startswith("item is not") or reason.startswith("record has no"):
        return "not_json"
    if reason.startswith("field 'event_type'"):
        return "unknown_type"
    if reason.startswith("field 'province': unknown"):
        return "unknown_province"
    if "in the future" in reason:
        return "future"
    if "belongs on topic" in reason:
        return "wrong_topic"
    if ": missing" in reason:
        return "missing_field"
    return "invalid_field"


class Processor:
    def __init__(self, settings, topic_ids: dict, sink: ClickHouseSink, pseudonym_key: bytes, provinces,
                 clock=time.time):
        self.settings = settings
        self.sink = sink
        self.topic_ids = topic_ids
        self.kinds = {settings.service_topic: "service", settings.security_topic: "security"}
        self.validator = Validator(provinces, int(settings.max_future_s * 1000))
        self.pseudonym_key = pseudonym_key
        self.horizon_ms = int(settings.dedup_horizon_s * 1000)
        self.memory_window_s = int(settings.memory_window_hours * 3600)
        self.clock = clock
        self.partitions: dict = {}
        self.batch = WriteBatch()
        self.pending_record_ms: list = []
        self._last_eviction = clock()
        self.last_window_written = -1

    # -- records -------------------------------------------------------------------------

    def process(self, topic: str, partition: int, offset: int, record_ms: int, value: bytes | None) -> list:
        """Apply one record; returns dead letters as (key, value) pairs to publish."""
        state = self.partitions.get((topic, partition))
        if state is None or offset < state.next_offset:
            state = self._take_over(topic, partition, offset, record_ms)
        state.next_offset = offset + 1
        RECORDS.labels(topic).inc()
        already_stored = offset <= state.stored_through
        if already_stored:
            REPLAYED.inc()
        now_ms = int(self.clock() * 1000)
        decoded = self.validator.decode(value, now_ms)
        rejections = list(decoded.rejections)
        if state.table is SERVICE_MINUTE:
            self._service(state, offset, record_ms, decoded.events, decoded.indexes, rejections, already_stored)
        else:
            self._security(state, offset, record_ms, decoded.events, decoded.indexes, rejections, already_stored)
        if not already_stored:
            self.pending_record_ms.append(record_ms)
        if not rejections or already_stored:
            return []
        return self._reject(state, offset, record_ms, rejections)

    def _misrouted(self, event, index, rejections, expected_kind) -> None:
        right = self.settings.security_topic if expected_kind == "service" else self.settings.service_topic
        rejections.append(
            (index, f"field 'event_type': {event.event_type} belongs on topic {right}", msgspec.json.encode(event))
        )

    def _service(self, state, offset, record_ms, events, indexes, rejections, already_stored) -> None:
        rows, dirty, recent = state.rows, state.dirty, state.recent
        raw = self.batch.service_raw
        seen = self.batch.seen
        topic_id, partition = state.topic_id, state.partition
        for event, index in zip(events, indexes):
            cls = type(event)
            if cls is SecurityAlert:
                self._misrouted(event, index, rejections, "service")
                continue
            event_id = event.event_id
            if not recent.add_if_new(event_id, record_ms):
                if not already_stored:
                    DUPLICATES.inc()
                continue
            occurred_ms = to_millis(event.occurred_at)
            window = occurred_ms // 60000 * 60
            key = (window, event.province, event.agency)
            row = rows.get(key)
            if row is None:
                row = rows[key] = Row(N_SERVICE, needs_base=window <= state.max_window)
                if window > state.max_window:
                    state.max_window = window
            if offset <= row.version:
                continue
            c = row.counters
            c[0] += 1
            due_ms = 0
            on_time = 0
            item_id = ""
            procedure = service_level = channel = result = method = direction = applicant = ""
            digitized = satisfied = None
            amount = 0
            if cls is DossierReceived:
                c[S["dossiers_received"]] += 1
                service_level = event.service_level
                if service_level == "full_online":
                    c[S["dossiers_received_full_online"]] += 1
                elif service_level == "partial_online":
                    c[S["dossiers_received_partial_online"]] += 1
                item_id, procedure, channel = event.dossier_id, event.procedure_code, event.channel
                due_ms = to_millis(event.due_at)
                if event.applicant_id is not None:
                    applicant = pseudonymise(self.pseudonym_key, event.applicant_id)
            elif cls is DossierCompleted:
                c[S["dossiers_completed"]] += 1
                due_ms = to_millis(event.due_at)
                if occurred_ms <= due_ms:
                    on_time = 1
                    c[S["dossiers_completed_on_time"]] += 1
                item_id, procedure, result = event.dossier_id, event.procedure_code, event.result
                digitized = None if event.digitized is None else int(event.digitized)
            elif cls is PaymentCompleted:
                c[S["payments_total"]] += 1
                amount = event.amount_vnd
                c[S["payments_vnd"]] += amount
                method = event.method
                if method == "online":
                    c[S["payments_online"]] += 1
                    c[S["payments_online_vnd"]] += amount
                item_id = event.dossier_id
            elif cls is DossierCancelled:
                c[S["dossiers_cancelled"]] += 1
                item_id, procedure = event.dossier_id, event.procedure_code
            elif cls is FeedbackReceived:
                c[S["feedback_received"]] += 1
                item_id, channel = event.feedback_id, event.channel
                due_ms = to_millis(event.due_at)
            elif cls is FeedbackResolved:
                c[S["feedback_resolved"]] += 1
                due_ms = to_millis(event.due_at)
                if occurred_ms <= due_ms:
                    on_time = 1
                    c[S["feedback_resolved_on_time"]] += 1
                if event.satisfied:
                    c[S["feedback_satisfied"]] += 1
                satisfied = None if event.satisfied is None else int(event.satisfied)
                item_id = event.feedback_id
            else:  # DocumentExchanged
                direction = event.direction
                c[S["documents_sent"] if direction == "sent" else S["documents_received"]] += 1
                item_id = event.document_id
            dirty.add(key)
            EVENTS_VALID.labels(event.event_type).inc()
            raw["event_id"].append(event_id)
            raw["event_type"].append(event.event_type)
            raw["occurred_at"].append(occurred_ms // 1000)
            raw["occurred_ms"].append(occurred_ms)
            raw["province"].append(event.province)
            raw["agency"].append(event.agency)
            raw["source"].append(event.source)
            raw["item_id"].append(item_id)
            raw["procedure_code"].append(procedure)
            raw["service_level"].append(service_level)
            raw["channel"].append(channel)
            raw["due_at"].append(due_ms // 1000 if due_ms else None)
            raw["due_ms"].append(due_ms)
            raw["on_time"].append(on_time)
            raw["result"].append(result)
            raw["digitized"].append(digitized)
            raw["amount_vnd"].append(amount)
            raw["method"].append(method)
            raw["satisfied"].append(satisfied)
            raw["direction"].append(direction)
            raw["applicant_hash"].append(applicant)
            raw["topic_id"].append(topic_id)
            raw["source_partition"].append(partition)
            raw["source_offset"].append(offset)
            raw["item_index"].append(-1 if index is None else index)
            raw["record_ms"].append(record_ms)
            seen["topic_id"].append(topic_id)
            seen["source_partition"].append(partition)
            seen["record_ms"].append(record_ms)
            seen["source_offset"].append(offset)
            seen["event_id"].append(event_id)

    def _security(self, state, offset, record_ms, events, indexes, rejections, already_stored) -> None:
        rows, dirty, recent = state.rows, state.dirty, state.recent
        raw = self.batch.security_raw
        seen = self.batch.seen
        topic_id, partition = state.topic_id, state.partition
        for event, index in zip(events, indexes):
            if type(event) is not SecurityAlert:
                self._misrouted(event, index, rejections, "security")
                continue
            event_id = event.event_id
            if not recent.add_if_new(event_id, record_ms):
                if not already_stored:
                    DUPLICATES.inc()
                continue
            occurred_ms = to_millis(event.occurred_at)
            window = occurred_ms // 60000 * 60
            technique = event.technique or ""
            key = (window, event.province, event.category, event.severity, event.action, event.sensor, technique)
            row = rows.get(key)
            if row is None:
                row = rows[key] = Row(N_SECURITY, needs_base=window <= state.max_window)
                if window > state.max_window:
                    state.max_window = window
            if offset <= row.version:
                continue
            c = row.counters
            c[0] += 1
            c[1] += event.count
            dirty.add(key)
            EVENTS_VALID.labels("security.alert").inc()
            raw["event_id"].append(event_id)
            raw["occurred_at"].append(occurred_ms // 1000)
            raw["occurred_ms"].append(occurred_ms)
            raw["province"].append(event.province)
            raw["agency"].append(event.agency)
            raw["source"].append(event.source)
            raw["category"].append(event.category)
            raw["severity"].append(event.severity)
            raw["action"].append(event.action)
            raw["sensor"].append(event.sensor)
            raw["dst_asset"].append(event.dst_asset)
            raw["src_ip"].append(event.src_ip or "")
            raw["rule_id"].append(event.rule_id or "")
            raw["technique"].append(technique)
            raw["count"].append(event.count)
            raw["topic_id"].append(topic_id)
            raw["source_partition"].append(partition)
            raw["source_offset"].append(offset)
            raw["item_index"].append(-1 if index is None else index)
            raw["record_ms"].append(record_ms)
            seen["topic_id"].append(topic_id)
            seen["source_partition"].append(partition)
            seen["record_ms"].append(record_ms)
            seen["source_offset"].append(offset)
            seen["event_id"].append(event_id)

    def _reject(self, state, offset, record_ms, rejections) -> list:
        letters = []
        rejected = self.batch.rejected
        for index, reason, original in rejections:
            EVENTS_REJECTED.labels(_reason_label(reason)).inc()
            item_index = -1 if index is None else index
            rejected["topic"].append(state.topic)
            rejected["topic_id"].append(state.topic_id)
            rejected["source_partition"].append(state.partition)
            rejected["source_offset"].append(offset)
            rejected["item_index"].append(item_index)
            rejected["record_ms"].append(record_ms)
            rejected["rejected_at"].append(record_ms // 1000)
            rejected["reason"].append(reason)
            rejected["original"].append(original.decode("utf-8", errors="replace"))
            letter = {
                "reason": reason,
                "topic": state.topic,
                "partition": state.partition,
                "offset": offset,
                "item_index": index,
                "record_timestamp_ms": record_ms,
            }
            try:
                letter["original"] = original.decode("utf-8")
            except UnicodeDecodeError:
                letter["original"] = None
                letter["original_base64"] = base64.b64encode(original).decode()
            key = f"{state.topic}:{state.partition}:{offset}:{item_index}".encode()
            letters.append((key, msgspec.json.encode(letter)))
        return letters

    # -- ownership -----------------------------------------------------------------------

    def _take_over(self, topic: str, partition: int, offset: int, record_ms: int) -> PartitionState:
        """Load a partition's stored state before its first record (or after a rewind)."""
        if (topic, partition) in self.partitions:
            self.flush()
        kind = self.kinds.get(topic)
        if kind is None:
            raise ValueError(f"record from unexpected topic {topic}")
        table = SERVICE_MINUTE if kind == "service" else SECURITY_MINUTE
        topic_id = self.topic_ids[topic]
        snapshot = self.sink.load_partition(table, topic_id, partition, offset, record_ms, self.horizon_ms)
        state = PartitionState(topic, topic_id, partition, table, self.horizon_ms)
        width = len(table.counters)
        for key, (counters, version) in snapshot.rows.items():
            row = Row(width, version=version)
            row.counters = counters
            state.rows[key] = row
            state.stored_through = max(state.stored_through, version)
        state.max_window = snapshot.max_window
        state.recent.preload(snapshot.seen)
        state.next_offset = offset
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

    def has_pending(self) -> bool:
        return bool(self.pending_record_ms) or any(s.dirty for s in self.partitions.values())

    def flush(self) -> int:
        """Write everything processed so far; raises StoreError and keeps it all on failure."""
        attempt = WriteBatch(
            service_raw=self.batch.service_raw,
            security_raw=self.batch.security_raw,
            seen=self.batch.seen,
            rejected=self.batch.rejected,
        )
        versions = []
        latest_window = -1
        for state in self.partitions.values():
            if not state.dirty:
                continue
            missing = [key for key in state.dirty if state.rows[key].needs_base]
            if missing:
                stored = self.sink.fetch_rows(state.table, state.topic_id, state.partition, missing)
                for key in missing:
                    row = state.rows[key]
                    if key in stored:
                        counters, version = stored[key]
                        row.counters = [a + b for a, b in zip(row.counters, counters)]
                        row.version = version
                    row.needs_base = False
            version = state.next_offset - 1
            versions.append((state, version))
            columns = attempt.service_minute if state.table is SERVICE_MINUTE else attempt.security_minute
            names = state.table.columns
            for key in state.dirty:
                values = (*key, state.topic_id, state.partition, version, *state.rows[key].counters)
                for name, value in zip(names, values):
                    columns[name].append(value)
                if key[0] > latest_window:
                    latest_window = key[0]
        written = self.sink.write(attempt)
        now = self.clock()
        for record_ms in self.pending_record_ms:
            LATENCY.observe(max(0.0, now - record_ms / 1000))
        for state, version in versions:
            for key in state.dirty:
                state.rows[key].version = version
            state.dirty.clear()
        if latest_window > self.last_window_written:
            self.last_window_written = latest_window
            LAST_WINDOW.set(latest_window)
        self.batch = WriteBatch()
        self.pending_record_ms = []
        if now - self._last_eviction >= EVICT_EVERY_S:
            self._evict()
            self._last_eviction = now
        return written

    def _evict(self) -> None:
        """Drop clean rows of minutes long past; a late event reloads them from ClickHouse."""
        for state in self.partitions.values():
            horizon = state.max_window - self.memory_window_s
            old = [key for key, row in state.rows.items() if key[0] < horizon and key not in state.dirty]
            for key in old:
                del state.rows[key]

