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
                 "alerted", "horizon_ms")

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

    def __len__(self) -> int:
        return len(self.open)

    def opened(self, item: OpenItem, record_ms: int) -> None:
        key = (item.kind, item.item_id)
        if key in self.open or key in self.alerted or key in self.closed_since_snapshot:
            return
        if self.closed.known([f"{item.kind}:{item.item_id}"], record_ms)[0]:
            return
        if self.loaded_to is not None and item.due_ms <= self.loaded_to:
            self._add(key, item)
        else:
            self.unloaded.append(item)

    def closed_item(self, kind: str, item_id: str, occurred_ms: int, due_ms: int | None, record_ms: int) -> None:
        """A completion, cancellation or resolution. One that comes after the due time does not
        prevent the alert: the item was overdue before it closed."""
        key = (kind, item_id)
        item = self.open.get(key)
        if item is not None:
            if occurred_ms > item.due_ms:
                return
            del self.open[key]
        elif due_ms is not None and occurred_ms > due_ms:
            return
        self.closed_since_snapshot.add(key)
        self.closed.admit([f"{kind}:{item_id}"], record_ms)

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
        for item in stored:
            key = (item.kind, item.item_id)
            if key in self.open or key in self.alerted or key in self.closed_since_snapshot:
                continue
            if self.closed.known([f"{item.kind}:{item.item_id}"], self.watermark)[0]:
                continue
            self._add(key, item)
        self.loaded_to = up_to

    def forget_alerted(self) -> None:
        """Alerted items are remembered for a horizon so that a replayed `received` does not alert again."""
        oldest = self.watermark - self.horizon_ms
        self.alerted = {key: at for key, at in self.alerted.items() if at >= oldest}

    def _add(self, key, item: OpenItem) -> None:
        self.open[key] = item
        heapq.heappush(self.heap, (item.due_ms, item.kind, item.item_id))
