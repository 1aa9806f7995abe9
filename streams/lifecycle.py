"""Every dossier and feedback item still open in a partition, and the transitions of the counts.

An item received at r, due at d and first closed at c (completed, cancelled, resolved; never: c
is infinite) is *open* on (r, c] and *overdue* on (d, c]: "carried over at t" and "overdue open
at t" (CONTRACT §2) count the items whose interval holds t. Each interval is two transitions,
entered at its start and left at its end, and each count at t is the sum of the transitions
before t: ClickHouse keeps them per bucket (a year is about twelve month rows), whatever history
is stored.

The transitions are decided when the events arrive, in whatever order, because every item still
open is held here: a closing finds its item in memory, never in ClickHouse. A receipt enters both
intervals at once (the overdue one starts in the future); a closing leaves them, or, when it
comes at or before the start (closed in time), takes the entry back. So a count is exact for any
t as soon as the events are stored, without waiting for the due time to pass.

Each event carries its transitions to ClickHouse in its own row (`LifecycleMarks`, four times
and weights), where a materialized view turns them into `lifecycle_edges`; the processor adds
them to the partition's lifecycle rows. A closing of an item not held (never received, or received and already closed) is
remembered for the horizon by record time, so a receipt that arrives after it pairs with it; a
receipt later than that is taken as a new item, and a second closing of an item is ignored (the
lifecycle view takes the earliest; README, "Limits").

Open items are held as columns: a dict of recent ones sealed into sorted numpy segments (hash
of "kind:item_id", r, d, an interned (kind, province, agency, procedure), when it was alerted): 40
bytes an item.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .dedup import RecentIds
from .overdue import HashedSegment, SegmentedItems, item_key

SEAL_AT = 4096


class LifecycleMarks(NamedTuple):
    """The transitions an event causes: for each interval, the time (epoch ms) and weight of its
    entry (+1; -1 takes an entry back) and of its end (+1), weight 0 for none."""

    open_entered_ms: int = 0
    open_entered: int = 0
    open_left_ms: int = 0
    open_left: int = 0
    overdue_entered_ms: int = 0
    overdue_entered: int = 0
    overdue_left_ms: int = 0
    overdue_left: int = 0


NO_MARKS = LifecycleMarks()
NEVER = 1 << 62


class OpenItemState(NamedTuple):
    received_ms: int
    due_ms: int
    kind: str
    province: str
    agency: str
    procedure_code: str
    alerted: int  # detected_ms of its overdue alert (the watermark that passed its due time); 0: none


class _Segment(HashedSegment):
    __slots__ = ("hashes", "received", "due", "meta", "alerted", "alive", "live")

    def __init__(self, hashes, received, due, meta, alerted):
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.received = received[order]
        self.due = due[order]
        self.meta = meta[order]
        self.alerted = alerted[order]
        self.alive = np.ones(len(order), dtype=bool)
        self.live = len(order)

    def matches(self, queries: np.ndarray) -> tuple:
        """(indexes into `queries`, positions) of the items with these hashes, live or not."""
        idx = self.hashes.searchsorted(queries)
        np.minimum(idx, len(self.hashes) - 1, out=idx)
        hit = np.flatnonzero(self.hashes[idx] == queries)
        return hit, idx[hit]

    def columns(self):
        pos = np.flatnonzero(self.alive)
        return self.hashes[pos], self.received[pos], self.due[pos], self.meta[pos], self.alerted[pos]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.hashes, self.received, self.due, self.meta, self.alerted, self.alive))


class _RecentClosings:
    """Closings of items not held, by key: the earliest closing time, until a horizon (by record
    time) has passed. Columns like streams.dedup: the current tenth of the horizon in a dict, older
    tenths as sorted arrays (16 bytes a closing), dropped whole once past the horizon. `paired`:
    keys closed that were received (a receipt paired with an earlier closing, or an item held that
    closed), so that a receipt after them is taken as a repeat."""

    __slots__ = ("horizon_ms", "tenth_ms", "pending", "pending_start", "sealed", "paired", "latest", "_prefetched")

    def __init__(self, horizon_ms: int):
        self.horizon_ms = max(int(horizon_ms), 1)
        self.tenth_ms = max(self.horizon_ms // 10, 1)
        self.pending: dict = {}  # key -> closed_ms
        self.pending_start = None
        self.sealed: list = []  # (latest record ms, sorted keys, closed ms)
        self.paired = RecentIds(self.horizon_ms)
        self.latest = 0
        self._prefetched = None  # (the sealed list looked in, {key: ((latest, closed ms), ...)}): prefetch()

    def add(self, key: int, closed_ms: int, record_ms: int) -> None:
        start = record_ms - record_ms % self.tenth_ms
        if start != self.pending_start:
            self._seal()
            self.pending_start = start
        if record_ms > self.latest:
            self.latest = record_ms
        self.pending.setdefault(key, closed_ms)

    def prefetch(self, keys: list) -> None:
        """Look up the keys of a run of records in the sealed tenths at once (see lookup)."""
        self.paired.prefetch(keys)
        if not self.sealed or not keys:
            self._prefetched = None
            return
        queries = np.fromiter(keys, dtype=np.int64, count=len(keys))
        hits: dict = dict.fromkeys(keys, ())
        for latest, hashes, closed in self.sealed:
            idx = np.minimum(hashes.searchsorted(queries), len(hashes) - 1)
            for i in np.flatnonzero(hashes[idx] == queries).tolist():
                hits[keys[i]] += ((latest, int(closed[idx[i]])),)
        self._prefetched = (self.sealed, hits)

    def lookup(self, keys: list, at_ms: int) -> list:
        """The closing time remembered for each key, or None."""
        found = [self.pending.get(key) for key in keys]
        if not self.sealed or not keys:
            return found
        oldest = at_ms - self.horizon_ms
        prefetched = self._prefetched
        if prefetched is not None and prefetched[0] is self.sealed and all(key in prefetched[1] for key in keys):
            hits = prefetched[1]
            for i, key in enumerate(keys):
                if found[i] is None:
                    found[i] = next((closed for latest, closed in hits[key] if latest >= oldest), None)
            return found
        queries = np.fromiter(keys, dtype=np.int64, count=len(keys))
        for latest, hashes, closed in self.sealed:
            if latest < oldest:
                continue
            idx = np.minimum(hashes.searchsorted(queries), len(hashes) - 1)
            hit = hashes[idx] == queries
            if hit.any():
                for i in np.flatnonzero(hit).tolist():
                    if found[i] is None:
                        found[i] = int(closed[idx[i]])
        return found

    def _seal(self) -> None:
        if self.pending:
            keys = np.fromiter(self.pending.keys(), dtype=np.int64, count=len(self.pending))
            closed = np.fromiter(self.pending.values(), dtype=np.int64, count=len(self.pending))
            order = np.argsort(keys, kind="stable")
            self.sealed = self.sealed + [(self.latest, keys[order], closed[order])]  # a new list: see _prefetched
            self.pending = {}
        oldest = self.latest - self.horizon_ms - self.tenth_ms
        self.sealed = [entry for entry in self.sealed if entry[0] >= oldest]

    def __len__(self) -> int:
        return len(self.pending) + sum(len(entry[1]) for entry in self.sealed)


class Lifecycle(SegmentedItems):
    __slots__ = ("fresh", "segments", "recent_closings", "_metas", "_meta_index", "_prefetched")

    def __init__(self, horizon_ms: int):
        self.fresh: dict = {}  # key -> OpenItemState
        self.segments: list = []
        self.recent_closings = _RecentClosings(horizon_ms)
        self._metas: list = []
        self._meta_index: dict = {}
        self._prefetched = None  # SegmentedItems

    def __len__(self) -> int:
        return len(self.fresh) + sum(segment.live for segment in self.segments)

    @property
    def nbytes(self) -> int:
        return sum(segment.nbytes for segment in self.segments)

    # -- events --------------------------------------------------------------------------

    def apply(self, events: list, record_ms: int) -> list:
        """The transitions of a record's receipts and closings, in order: receipts are
        (kind, item_id, received_ms, due_ms, province, agency, procedure_code), closings
        (kind, item_id, closed_ms). Returns, for each, (LifecycleMarks, the OpenItemState it
        closed or None)."""
        keys = [item_key(event[0], event[1]) for event in events]
        held = self._find(keys)
        closings = self.recent_closings
        remembered = closings.lookup(keys, record_ms)
        paired_before = closings.paired.known_keys(keys, record_ms)
        closed_here: dict = {}  # key -> closed_ms: this record's closings, for its later receipts
        paired_here: list = []
        fresh = self.fresh
        out = []
        for event, key, found, closed_ms, was_paired in zip(events, keys, held, remembered, paired_before):
            live = found is not None and found[0].alive[found[1]]
            if len(event) == 7:  # a receipt
                if key in fresh or live:
                    out.append((NO_MARKS, None))  # a repeated receipt: the first one counts
                    continue
                closed_ms = closed_here.get(key, closed_ms)
                if closed_ms is None:
                    kind, _, received_ms, due_ms, province, agency, procedure = event
                    fresh[key] = OpenItemState(received_ms, due_ms, kind, province, agency, procedure, False)
                    out.append((LifecycleMarks(received_ms, 1, 0, 0, due_ms, 1, 0, 0), None))
                elif was_paired or key in paired_here:
                    out.append((NO_MARKS, None))
                else:  # closed before it was received: both intervals are known at once
                    paired_here.append(key)
                    received_ms, due_ms = event[2], event[3]
                    opened, overdue = received_ms < closed_ms, due_ms < closed_ms
                    out.append((LifecycleMarks(
                        received_ms, int(opened), closed_ms, int(opened), due_ms, int(overdue), closed_ms, int(overdue)),
                        None))
                continue
            closed_ms = event[2]
            item = fresh.pop(key, None)
            if item is None and live:
                segment, pos = found
                segment.alive[pos] = False
                segment.live -= 1
                kind, province, agency, procedure = self._metas[segment.meta[pos]]
                item = OpenItemState(int(segment.received[pos]), int(segment.due[pos]), kind, province, agency,
                                     procedure, int(segment.alerted[pos]))
            # Remembered either way: a receipt after it, within the horizon, pairs with it (an item
            # not held) or is a repeat (an item it closed).
            closings.add(key, closed_ms, record_ms)
            closed_here.setdefault(key, closed_ms)
            if item is None:
                out.append((NO_MARKS, None))
                continue
            paired_here.append(key)
            opened_until, overdue_until = closed_ms > item.received_ms, closed_ms > item.due_ms
            # Left at the closing, or, closed at or before the start, the entry taken back.
            out.append((LifecycleMarks(
                item.received_ms, 0 if opened_until else -1, closed_ms, int(opened_until),
                item.due_ms, 0 if overdue_until else -1, closed_ms, int(overdue_until)), item))
        if paired_here:
            closings.paired.admit_keys(paired_here, record_ms)
        if len(fresh) >= SEAL_AT:
            self._seal()
        return out

    def mark_alerted(self, kind: str, item_id: str, detected_ms: int) -> bool:
        """The tracker paged for this item at `detected_ms`: its closing will resolve the alert. False
        when the item is not held (closed already): the alert is over as it starts."""
        key = item_key(kind, item_id)
        detected_ms = max(1, detected_ms)
        item = self.fresh.get(key)
        if item is not None:
            self.fresh[key] = item._replace(alerted=detected_ms)
            return True
        found = self._find([key])[0]
        if found is None:
            return False
        segment, pos = found
        segment.alerted[pos] = detected_ms
        return True

    # -- state ---------------------------------------------------------------------------

    def load(self, items) -> None:
        """Items still open when a partition is taken over: (kind, item_id, received_ms, due_ms,
        province, agency, procedure_code, detected_ms of its alert or 0)."""
        for kind, item_id, received_ms, due_ms, province, agency, procedure, alerted in items:
            self.fresh[item_key(kind, item_id)] = OpenItemState(int(received_ms), int(due_ms), kind, province, agency,
                                                                procedure, int(alerted))
            if len(self.fresh) >= SEAL_AT:
                self._seal()

    def remember_closings(self, closings) -> None:
        """(kind, item_id, closed_ms, record_ms, received) of recent closings, oldest first (a take-over):
        `received`, the item had been received, so a receipt after the closing is a repeat."""
        for kind, item_id, closed_ms, record_ms, received in closings:
            key = item_key(kind, item_id)
            self.recent_closings.add(key, int(closed_ms), int(record_ms))
            if received:
                self.recent_closings.paired.admit_keys([key], int(record_ms))

    def prefetch(self, keys: list) -> None:
        """Look up the keys (item_key) of a run of records in the segments and the recent closings at
        once: applying its records one by one then costs dict accesses instead of numpy calls each."""
        self.recent_closings.prefetch(keys)
        self._prefetch_segments(keys)

    def _meta(self, item: OpenItemState) -> int:
        meta = (item.kind, item.province, item.agency, item.procedure_code)
        index = self._meta_index.get(meta)
        if index is None:
            index = self._meta_index[meta] = len(self._metas)
            self._metas.append(meta)
        return index

    def _seal(self) -> None:
        items = self.fresh
        self.fresh = {}
        n = len(items)
        values = list(items.values())
        self.segments = self.segments + [_Segment(  # a new list: see _prefetched
            np.fromiter(items.keys(), dtype=np.int64, count=n),
            np.fromiter((item.received_ms for item in values), dtype=np.int64, count=n),
            np.fromiter((item.due_ms for item in values), dtype=np.int64, count=n),
            np.fromiter((self._meta(item) for item in values), dtype=np.int32, count=n),
            np.fromiter((item.alerted for item in values), dtype=np.int64, count=n),
        )]
        self._tidy()

    def _tidy(self) -> None:
        """Merge the newest segment into the one before while it is at least half its size (O(log n)
        segments; closed items dropped)."""
        segments = [segment for segment in self.segments if segment.live]
        while len(segments) >= 2 and 2 * segments[-1].live >= segments[-2].live:
            newer, older = segments.pop(), segments.pop()
            segments.append(_Segment(*(np.concatenate(pair) for pair in zip(older.columns(), newer.columns()))))
        if segments != self.segments:  # unchanged, the same list: what prefetch() found stays valid
            self.segments = segments


# -- a database from before the lifecycle counts -----------------------------------------------

_RECEIPTS = ("dossier.received", "feedback.received")
_CLOSINGS = ("dossier.completed", "dossier.cancelled", "feedback.resolved")


def events_of(rows) -> list:
    """Lifecycle.apply() events from (event_type, item_id, occurred_ms, due_ms, province, agency, procedure_code)."""
    events = []
    for event_type, item_id, occurred, due, province, agency, procedure in rows:
        kind = "dossier" if event_type.startswith("dossier.") else "feedback"
        if event_type in _RECEIPTS:
            events.append((kind, item_id, int(occurred), int(due), province, agency, procedure))
        else:
            events.append((kind, item_id, int(occurred)))
    return events


def fill(store, horizon_ms: int = 600_000, page: int = 200_000) -> bool:
    """The transitions of the events a database stored before the lifecycle counts existed, computed
    once per partition in offset order with the stream's rules, as the worker would have: written to
    lifecycle_edges, then counted. Returns whether there was anything to do."""
    from opscentre.clickhouse import quote
    from sinks.clickhouse_sink import ClickHouseSink
    from sinks.schema import LIFECYCLE_SINCE, applied_migrations, record_migrations

    if LIFECYCLE_SINCE in applied_migrations(store):
        return False
    sink = ClickHouseSink(store)
    events_table = store.table("service_events")
    store.execute(f"INSERT INTO {store.table('open_items')} SELECT topic_id, source_partition, "
                  "if(event_type LIKE 'dossier.%', 'dossier', 'feedback'), item_id, "
                  f"event_type IN {_CLOSINGS}, source_offset, item_index, occurred_ms, due_ms, record_ms, province, "
                  f"agency, procedure_code FROM {events_table} FINAL WHERE event_type IN {_RECEIPTS + _CLOSINGS}")
    names = ["at_ms", "province", "agency", "procedure_code", "kind", "family", "direction", "weight",
             "topic_id", "source_partition", "source_offset", "item_index"]
    for topic_id, partition in store.query(f"SELECT DISTINCT topic_id, source_partition FROM {events_table}"):
        lifecycle = Lifecycle(horizon_ms)
        after = -1
        while True:
            rows = store.query(
                f"SELECT source_offset, item_index, record_ms, event_type, item_id, occurred_ms, due_ms, province, agency, "
                f"procedure_code FROM {events_table} FINAL WHERE topic_id = {quote(topic_id)} "
                f"AND source_partition = {int(partition)} AND source_offset > {after} "
                f"AND source_offset <= {after + page} AND event_type IN {_RECEIPTS + _CLOSINGS} "
                f"ORDER BY source_offset, item_index")
            if not rows:
                if not int(store.query(f"SELECT count() FROM {events_table} WHERE topic_id = {quote(topic_id)} "
                                       f"AND source_partition = {int(partition)} AND source_offset > {after}")[0][0]):
                    break
                after += page
                continue
            edges = []
            start = 0
            while start < len(rows):
                end = start
                while end < len(rows) and rows[end][0] == rows[start][0]:
                    end += 1
                record = rows[start:end]
                results = lifecycle.apply(events_of(row[3:] for row in record), int(record[0][2]))
                for row, (marks, item) in zip(record, results):
                    edges += edges_of(marks, item, row, topic_id, int(partition))
                start = end
            if edges:
                store.insert("lifecycle_edges", names, [list(column) for column in zip(*edges)])
            after = int(rows[-1][0])
        sink.recompute_partition_lifecycle(topic_id, int(partition), 0)
    record_migrations(store, [LIFECYCLE_SINCE])
    return True


def edges_of(marks: LifecycleMarks, item, row, topic_id: str, partition: int) -> list:
    """lifecycle_edges rows of one event's marks (what the materialized view makes of its row)."""
    offset, index, _, event_type, _, _, _, province, agency, procedure = row
    if item is not None:
        province, agency, procedure = item.province, item.agency, item.procedure_code
    kind = "dossier" if event_type.startswith("dossier.") else "feedback"
    return [(at_ms, province, agency, procedure, kind, family, direction, weight, topic_id, partition, int(offset),
             int(index))
            for at_ms, family, direction, weight in (
                (marks.open_entered_ms, "open", "entered", marks.open_entered),
                (marks.open_left_ms, "open", "left", marks.open_left),
                (marks.overdue_entered_ms, "overdue", "entered", marks.overdue_entered),
                (marks.overdue_left_ms, "overdue", "left", marks.overdue_left))
            if weight]
