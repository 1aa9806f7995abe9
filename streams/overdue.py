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
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from .dedup import RecentIds

ALERT_TYPES = {"dossier": "dossier.overdue", "feedback": "feedback.overdue"}


class OpenItem(NamedTuple):
    due_ms: int
    kind: str  # "dossier" or "feedback"
    item_id: str
    province: str
    agency: str
    procedure_code: str


class OverdueTracker:
    __slots__ = ("watermark", "loaded_to", "open", "heap", "unloaded", "closed_since_snapshot", "closed",
                 "alerted", "horizon_ms", "_opening", "_closing")

    def __init__(self, horizon_ms: int):
        self.watermark = -1
        self.loaded_to = None  # open items due at or before this are in memory (None: nothing loaded yet)
        self.open: dict = {}  # (kind, item_id) -> OpenItem
        self.heap: list = []  # (due_ms, kind, item_id); entries of closed items are skipped when popped
        self.unloaded: list = []  # OpenItem received since the last snapshot, due after loaded_to
        self.closed_since_snapshot: set = set()
        self.closed = RecentIds(horizon_ms)  # "kind:item_id" closed lately: a late received stays closed
        self.alerted: dict = {}  # (kind, item_id) -> watermark when alerted
        self.horizon_ms = horizon_ms
        # A record's openings and closings, settled together: one look-up in `closed` per record.
        self._opening: dict = {}  # (kind, item_id) -> OpenItem
        self._closing: list = []  # "kind:item_id"

    def __len__(self) -> int:
        return len(self.open)

    def opened(self, item: OpenItem) -> None:
        """A receipt; it takes effect at settle(), after the rest of its record."""
        self._opening[(item.kind, item.item_id)] = item

    def closed_item(self, kind: str, item_id: str, occurred_ms: int, due_ms: int | None) -> None:
        """A completion, cancellation or resolution. One that comes after the due time does not
        prevent the alert: the item was overdue before it closed."""
        key = (kind, item_id)
        item = self.open.get(key)
        if item is not None:
            if occurred_ms > item.due_ms:
                return
            del self.open[key]
        else:
            item = self._opening.get(key)  # received earlier in the same record
            if item is not None:
                if occurred_ms > item.due_ms:
                    return
                del self._opening[key]
            elif due_ms is not None and occurred_ms > due_ms:
                return
        self.closed_since_snapshot.add(key)
        self._closing.append(f"{kind}:{item_id}")

    def settle(self, record_ms: int) -> None:
        """Apply the record's closings and openings (call after each record)."""
        if self._closing:
            self.closed.admit(self._closing, record_ms)
            self._closing = []
        if not self._opening:
            return
        items = [item for key, item in self._opening.items()
                 if key not in self.open and key not in self.alerted and key not in self.closed_since_snapshot]
        self._opening = {}
        if items:
            closed = self.closed.known([f"{item.kind}:{item.item_id}" for item in items], record_ms)
            for item, was_closed in zip(items, closed):
                if was_closed:
                    continue
                if self.loaded_to is not None and item.due_ms <= self.loaded_to:
                    self._add((item.kind, item.item_id), item)
                else:
                    self.unloaded.append(item)

    def advance(self, watermark: int) -> list:
        """Move the watermark (never back); returns the items that went overdue."""
        if watermark > self.watermark:
            self.watermark = watermark
        watermark = self.watermark
        heap, open_items = self.heap, self.open
        if not heap or heap[0][0] >= watermark:
            return []
        overdue = []
        while heap and heap[0][0] < watermark:
            _, kind, item_id = heapq.heappop(heap)
            item = open_items.pop((kind, item_id), None)
            if item is not None:
                self.alerted[(kind, item_id)] = watermark
                overdue.append(item)
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
        stored = [item for item in stored if (item.kind, item.item_id) not in self.open
                  and (item.kind, item.item_id) not in self.alerted
                  and (item.kind, item.item_id) not in self.closed_since_snapshot]
        closed = self.closed.known([f"{item.kind}:{item.item_id}" for item in stored], self.watermark)
        for item, was_closed in zip(stored, closed):
            if not was_closed:
                self._add((item.kind, item.item_id), item)
        self.loaded_to = up_to

    def forget_alerted(self) -> None:
        """Alerted items are remembered for a horizon so that a replayed `received` does not alert again."""
        oldest = self.watermark - self.horizon_ms
        self.alerted = {key: at for key, at in self.alerted.items() if at >= oldest}

    def _add(self, key, item: OpenItem) -> None:
        self.open[key] = item
        heapq.heappush(self.heap, (item.due_ms, item.kind, item.item_id))
