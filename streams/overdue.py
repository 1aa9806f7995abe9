"""Dossiers and feedback items going overdue, detected on event time.

One item's events share a source partition (CONTRACT §1), so each partition
tracks its own items. Time is the partition's watermark: the latest
min(occurred_at, record timestamp) of its events, so a replay of history
raises the same alerts at their historical times, and an event dated in the
future cannot fire alerts early. An item is overdue once the watermark passes
its due time and no completion, cancellation or resolution at or before the
due time has been seen; an item closed late was overdue too, and alerts.

Memory holds only the open items due within the look-ahead (default one
hour past the watermark); items due later stay in ClickHouse and are loaded
when the watermark comes near them, after the snapshot that stored them.
Items received since the last snapshot with a later due time wait in
`unloaded`, and closings since the last snapshot in `closed_since_snapshot`,
so a load that cannot see them yet does not miss or resurrect them.

Open items are many (hundreds of thousands at 5,000 events/s when procedures
take minutes) and most close before they are due, so they are kept as
columns, not objects: items received while loaded wait in a small dict, and
are sealed, like each load, into a segment of numpy arrays in due order (due
time, 64-bit hash of "kind:item_id", interned kind/province/agency/procedure,
the item id's bytes) with a hash index for closings: about 30 bytes plus the
id per item. A record's closings are looked up in the segments together,
when the record is settled. Segments are merged, dropping closed and alerted
items, when a newer one grows to half the size of the one before it.
"""

from __future__ import annotations

import heapq
from functools import partial
from typing import NamedTuple

import numpy as np

from .dedup import RecentIds

ALERT_TYPES = {"dossier": "dossier.overdue", "feedback": "feedback.overdue"}
NEVER = 1 << 62
SEAL_AT = 4096  # items in the dict before they are sealed into a segment


class OpenItem(NamedTuple):
    due_ms: int
    kind: str  # "dossier" or "feedback"
    item_id: str
    province: str
    agency: str
    procedure_code: str


# open_item((due_ms, kind, item_id, province, agency, procedure_code)): an OpenItem built at C
# speed, for receipts on the hot path; OpenItem(...) runs a Python-level __new__ (0.24 against 0.14 µs).
open_item = partial(tuple.__new__, OpenItem)


def item_key(kind: str, item_id: str) -> int:
    """hash("kind:item_id"): also the id under which `OverdueTracker.closed` remembers a closing."""
    return hash(f"{kind}:{item_id}")



class HashedSegment:
    """A segment of items looked up by their 64-bit key: `matches()` gives (indexes into the queries,
    positions) of the items with those keys, live or not; `alive` says which still are."""

    __slots__ = ()

    def find(self, queries: np.ndarray):
        """matches() of the live items, or None when there are none."""
        hit, pos = self.matches(queries)
        if not len(hit):
            return None
        live = self.alive[pos]
        return hit[live], pos[live]


class SegmentedItems:
    """Items held in `segments` (HashedSegment, oldest first; a change makes a new list), found by
    key. A run of records looks its keys up once (`_prefetch_segments`): finding them record by
    record then costs dict accesses instead of numpy calls each. The subclass holds `segments`
    and `_prefetched`: (the segments list looked in, {key: ((segment, position), ...)}, the keys)."""

    __slots__ = ()

    def _prefetch_segments(self, keys: list) -> None:
        self._prefetched = self._places(keys) if keys else None

    def _places(self, keys: list) -> tuple:
        places: dict = dict.fromkeys(keys, ())
        if self.segments:
            queries = np.fromiter(keys, dtype=np.int64, count=len(keys))
            for segment in self.segments:
                for i, pos in zip(*(a.tolist() for a in segment.matches(queries))):
                    places[keys[i]] += ((segment, pos),)
        return self.segments, places, keys

    def _find(self, keys: list) -> list:
        """For each key, (segment, position) of its live item in a segment, or None. Sealing items
        mid-run makes a new segments list: the run's keys are looked up again in that one."""
        found = [None] * len(keys)
        if not self.segments or not keys:
            return found
        prefetched = self._prefetched
        if prefetched is not None:
            if prefetched[0] is not self.segments:
                prefetched = self._prefetched = self._places(prefetched[2])
            places = prefetched[1]
            try:
                for i, key in enumerate(keys):
                    for segment, pos in places[key]:  # the last segment holding it live, as below
                        if segment.alive[pos]:
                            found[i] = (segment, pos)
                return found
            except KeyError:  # not prefetched
                found = [None] * len(keys)
        queries = np.fromiter(keys, dtype=np.int64, count=len(keys))
        for segment in self.segments:
            hits = segment.find(queries)
            if hits is not None:
                for i, pos in zip(hits[0].tolist(), hits[1].tolist()):
                    found[i] = (segment, pos)
        return found

class _Segment(HashedSegment):
    """Open items in due order; `alive` turns off as they close or go overdue."""

    __slots__ = ("due", "meta", "starts", "ids", "alive", "hashes", "by_hash", "cursor", "live")

    def __init__(self, due: np.ndarray, hashes: np.ndarray, meta: np.ndarray, ids: list):
        order = np.argsort(due, kind="stable")
        self.due = due[order]
        hashes = hashes[order]
        self.meta = meta[order].astype(np.int32)
        encoded = [ids[i] for i in order.tolist()]
        starts = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=starts[1:])
        self.starts = starts.astype(np.uint32) if starts[-1] < 1 << 32 else starts
        self.ids = b"".join(encoded)
        self.by_hash = np.argsort(hashes, kind="stable").astype(np.int32)
        self.hashes = hashes[self.by_hash]
        self.alive = np.ones(len(order), dtype=bool)
        self.cursor = 0  # items before this one (in due order) were passed by the watermark
        self.live = len(order)

    @property
    def next_due(self) -> int:
        return int(self.due[self.cursor]) if self.cursor < len(self.due) else NEVER

    def matches(self, queries: np.ndarray) -> tuple:
        """(indexes into `queries`, positions) of the items with these hashes, live or not."""
        hashes = self.hashes
        idx = hashes.searchsorted(queries)
        np.minimum(idx, len(hashes) - 1, out=idx)
        hit = np.flatnonzero(hashes[idx] == queries)
        return hit, self.by_hash[idx[hit]]

    def item_id(self, pos: int) -> str:
        return self.ids[int(self.starts[pos]):int(self.starts[pos + 1])].decode()

    def kill(self, pos: int) -> None:
        self.alive[pos] = False
        self.live -= 1

    def pass_until(self, watermark: int) -> np.ndarray:
        """Positions of the live items due before `watermark`, which stop being live."""
        end = int(np.searchsorted(self.due, watermark, side="left"))
        positions = np.arange(self.cursor, end)[self.alive[self.cursor:end]]
        self.alive[positions] = False
        self.live -= len(positions)
        self.cursor = end
        return positions

    def live_columns(self) -> tuple:
        pos = np.flatnonzero(self.alive)
        hashes = np.empty(len(self.hashes), dtype=np.int64)
        hashes[self.by_hash] = self.hashes
        starts, ids = self.starts, self.ids
        return (self.due[pos], hashes[pos], self.meta[pos],
                [ids[s:e] for s, e in zip(starts[pos].tolist(), starts[pos + 1].tolist())])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.due, self.meta, self.starts, self.alive, self.hashes, self.by_hash)) + len(self.ids)


class OverdueTracker(SegmentedItems):
    __slots__ = ("watermark", "loaded_to", "fresh", "fresh_heap", "segments", "next_due", "unloaded",
                 "closed_since_snapshot", "closed", "alerted", "horizon_ms", "_metas", "_meta_index",
                 "_opening", "_closing", "_closed_keys", "_prefetched")

    def __init__(self, horizon_ms: int):
        self.watermark = -1
        self.loaded_to = None  # open items due at or before this are in memory (None: nothing loaded yet)
        self.fresh: dict = {}  # key -> OpenItem, received while its due time was within the loaded range
        self.fresh_heap: list = []  # (due_ms, key); entries of items no longer in `fresh` are skipped
        self.segments: list = []  # _Segment, oldest first
        self.next_due = NEVER  # nothing in memory is due before this
        self.unloaded: list = []  # OpenItem received since the last snapshot, due after loaded_to
        self.closed_since_snapshot: set = set()  # keys
        self.closed = RecentIds(horizon_ms)  # item_key() of items closed lately: a late received stays closed
        self.alerted: dict = {}  # key -> watermark when alerted
        self.horizon_ms = horizon_ms
        self._metas: list = []  # (kind, province, agency, procedure_code), interned
        self._meta_index: dict = {}
        # A record's openings and closings, settled together.
        self._opening: dict = {}  # key -> OpenItem
        self._closing: list = []  # (key, occurred_ms, due_ms) to look up in the segments
        self._closed_keys: list = []  # keys closed by the record
        self._prefetched = None  # SegmentedItems

    def __len__(self) -> int:
        return len(self.fresh) + sum(segment.live for segment in self.segments)

    @property
    def nbytes(self) -> int:
        """Bytes held by the segments (the dict of fresh items aside)."""
        return sum(segment.nbytes for segment in self.segments)

    def remember_alerted(self, alerted) -> None:
        """(kind, item_id, watermark when alerted) of alerts stored before a take-over."""
        self.alerted = {item_key(kind, item_id): at for kind, item_id, at in alerted}

    def opened(self, item: OpenItem) -> None:
        """A receipt; it takes effect at settle(), after the rest of its record."""
        self._opening[item_key(item.kind, item.item_id)] = item

    def closed_item(self, kind: str, item_id: str, occurred_ms: int, due_ms: int | None) -> None:
        """A completion, cancellation or resolution. One that comes after the due time does not
        prevent the alert: the item was overdue before it closed."""
        key = item_key(kind, item_id)
        item = self.fresh.get(key)
        if item is not None:
            if occurred_ms > item.due_ms:
                return
            del self.fresh[key]
        else:
            item = self._opening.get(key)  # received earlier in the same record
            if item is not None:
                if occurred_ms > item.due_ms:
                    return
                del self._opening[key]
            elif self.segments:
                self._closing.append((key, occurred_ms, due_ms))
                return
            elif due_ms is not None and occurred_ms > due_ms:
                return
        self.closed_since_snapshot.add(key)
        self._closed_keys.append(key)

    def settle(self, record_ms: int) -> None:
        """Apply the record's closings and openings (call after each record)."""
        if self._closing:
            self._settle_closings()
        if self._closed_keys:
            self.closed.admit_keys(self._closed_keys, record_ms)
            self._closed_keys = []
        if not self._opening:
            return
        fresh, alerted, closed_since = self.fresh, self.alerted, self.closed_since_snapshot
        candidates = {key: item for key, item in self._opening.items()
                      if key not in fresh and key not in alerted and key not in closed_since}
        self._opening = {}
        if candidates:
            self._admit(candidates, record_ms)

    def _settle_closings(self) -> None:
        closing, self._closing = self._closing, []
        for (key, occurred_ms, due_ms), found in zip(closing, self._find([c[0] for c in closing])):
            if found is not None:
                segment, pos = found
                if occurred_ms > segment.due[pos]:
                    continue
                segment.kill(pos)
            elif due_ms is not None and occurred_ms > due_ms:
                continue
            self.closed_since_snapshot.add(key)
            self._closed_keys.append(key)

    def _admit(self, candidates: dict, at_ms: int) -> None:
        """Hold new receipts if due within the loaded range, else leave them to the next load."""
        loaded_to = self.loaded_to
        for key, item in zip(*self._not_known(candidates, at_ms)):
            if loaded_to is not None and item.due_ms <= loaded_to:
                self.fresh[key] = item
                heapq.heappush(self.fresh_heap, (item.due_ms, key))
                if item.due_ms < self.next_due:
                    self.next_due = item.due_ms
            else:
                self.unloaded.append(item)
        if len(self.fresh_heap) >= SEAL_AT:  # the heap also holds entries of items closed since
            self._seal_fresh()

    def _not_known(self, candidates: dict, at_ms: int) -> tuple[list, list]:
        """(keys, items) of the candidates (key -> OpenItem, already not in `fresh`, alerted or closed
        since the snapshot) that are not live in a segment either, nor closed within the horizon."""
        keys = [key for key, found in zip(candidates, self._find(list(candidates))) if found is None]
        closed = self.closed.known_keys(keys, at_ms)
        keys = [k for k, c in zip(keys, closed) if not c]
        return keys, [candidates[key] for key in keys]

    def prefetch(self, keys: list) -> None:
        """Look up the keys (item_key) of a run of records in the segments and in `closed` at once:
        settling its records one by one then costs dict accesses instead of numpy calls each."""
        self.closed.prefetch(keys)
        self._prefetch_segments(keys)

    def advance(self, watermark: int) -> list:
        """Move the watermark (never back); returns the items that went overdue, by due time."""
        if watermark > self.watermark:
            self.watermark = watermark
        watermark = self.watermark
        if self.next_due >= watermark:
            return []
        overdue = []
        heap, fresh = self.fresh_heap, self.fresh
        while heap and heap[0][0] < watermark:
            due_ms, key = heapq.heappop(heap)
            item = fresh.get(key)
            if item is not None and item.due_ms <= due_ms:  # else the entry is stale
                del fresh[key]
                self.alerted[key] = watermark
                overdue.append(item)
        for segment in self.segments:
            if segment.next_due >= watermark:
                continue
            for pos in segment.pass_until(watermark).tolist():
                kind, province, agency, procedure = self._metas[segment.meta[pos]]
                item = OpenItem(int(segment.due[pos]), kind, segment.item_id(pos), province, agency, procedure)
                self.alerted[item_key(kind, item.item_id)] = watermark
                overdue.append(item)
        self._tidy_segments()
        overdue.sort()
        return overdue

    def snapshot_taken(self) -> list:
        """The snapshot now holds the items and closings seen so far; returns the unloaded items it stores."""
        unloaded, self.unloaded = self.unloaded, []
        self.closed_since_snapshot = set()
        return unloaded

    def needs_load(self, lookahead_ms: int) -> bool:
        return self.watermark >= 0 and (self.loaded_to is None or self.watermark + lookahead_ms // 2 > self.loaded_to)

    def load(self, stored: list, up_to: int) -> None:
        """Add open items due up to `up_to`, read from the store after the latest snapshot was written."""
        keep = []
        for item in self.unloaded:
            (stored if item.due_ms <= up_to else keep).append(item)
        self.unloaded = keep
        fresh, alerted, closed_since = self.fresh, self.alerted, self.closed_since_snapshot
        candidates = {}
        for item in stored:
            key = item_key(item.kind, item.item_id)
            if key not in fresh and key not in alerted and key not in closed_since:
                candidates[key] = item
        self._add_segment(*self._not_known(candidates, self.watermark))
        self.loaded_to = up_to

    def forget_alerted(self) -> None:
        """Alerted items are remembered for a horizon so that a replayed `received` does not alert again."""
        oldest = self.watermark - self.horizon_ms
        self.alerted = {key: at for key, at in self.alerted.items() if at >= oldest}

    # -- segments ------------------------------------------------------------------------

    def _meta(self, item: OpenItem) -> int:
        meta = (item.kind, item.province, item.agency, item.procedure_code)
        index = self._meta_index.get(meta)
        if index is None:
            index = self._meta_index[meta] = len(self._metas)
            self._metas.append(meta)
        return index

    def _seal_fresh(self) -> None:
        keys, items = list(self.fresh), list(self.fresh.values())
        self.fresh, self.fresh_heap = {}, []
        self._add_segment(keys, items)

    def _add_segment(self, keys: list, items: list) -> None:
        if items:
            n = len(items)
            self.segments = self.segments + [_Segment(  # a new list: see _prefetched
                np.fromiter((item.due_ms for item in items), dtype=np.int64, count=n),
                np.fromiter(keys, dtype=np.int64, count=n),
                np.fromiter((self._meta(item) for item in items), dtype=np.int32, count=n),
                [item.item_id.encode() for item in items],
            )]
        self._tidy_segments()

    def _tidy_segments(self) -> None:
        """Drop segments with nothing live; merge the newest into the one before while it is at least half
        its size, so there are O(log n) segments and closed items do not pile up."""
        segments = [segment for segment in self.segments if segment.live]
        while len(segments) >= 2 and 2 * segments[-1].live >= segments[-2].live:
            newer, older = segments.pop(), segments.pop()
            old, new = older.live_columns(), newer.live_columns()
            segments.append(_Segment(*(np.concatenate((a, b)) for a, b in zip(old[:3], new[:3])), old[3] + new[3]))
        if segments != self.segments:  # unchanged, the same list: what prefetch() found stays valid
            self.segments = segments
        heap_due = self.fresh_heap[0][0] if self.fresh_heap else NEVER
        self.next_due = min([heap_due] + [segment.next_due for segment in segments])
