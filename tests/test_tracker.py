"""The overdue tracker's columnar memory against a plain dict-and-heap model of the same rules (unit level).

The rules themselves are checked end to end against a ground truth in test_overdue.py.
"""

from __future__ import annotations

import heapq
import random

import pytest

import streams.overdue as overdue
from streams.dedup import RecentIds
from streams.overdue import OpenItem, OverdueTracker

HORIZON_MS = 60_000
LOOKAHEAD_MS = 120_000


class ModelTracker:
    """Every open item an object in a dict, a heap of due times: simple, and ten times the memory."""

    def __init__(self, horizon_ms):
        self.watermark, self.loaded_to = -1, None
        self.open, self.heap, self.unloaded = {}, [], []
        self.closed_since_snapshot, self.alerted = set(), {}
        self.closed = RecentIds(horizon_ms)
        self.horizon_ms = horizon_ms
        self._opening, self._closing = {}, []

    def __len__(self):
        return len(self.open)

    def opened(self, item):
        self._opening[(item.kind, item.item_id)] = item

    def closed_item(self, kind, item_id, occurred_ms, due_ms):
        key = (kind, item_id)
        item = self.open.get(key) or self._opening.get(key)
        if item is not None:
            if occurred_ms > item.due_ms:
                return
            self.open.pop(key, None) if key in self.open else self._opening.pop(key)
        elif due_ms is not None and occurred_ms > due_ms:
            return
        self.closed_since_snapshot.add(key)
        self._closing.append(f"{kind}:{item_id}")

    def settle(self, record_ms):
        if self._closing:
            self.closed.admit(self._closing, record_ms)
            self._closing = []
        items = [item for key, item in self._opening.items()
                 if key not in self.open and key not in self.alerted and key not in self.closed_since_snapshot]
        self._opening = {}
        closed = self.closed.known([f"{item.kind}:{item.item_id}" for item in items], record_ms)
        for item, was_closed in zip(items, closed):
            if not was_closed:
                if self.loaded_to is not None and item.due_ms <= self.loaded_to:
                    self._add(item)
                else:
                    self.unloaded.append(item)

    def advance(self, watermark):
        self.watermark = max(self.watermark, watermark)
        overdue = []
        while self.heap and self.heap[0][0] < self.watermark:
            due_ms, kind, item_id = heapq.heappop(self.heap)
            item = self.open.get((kind, item_id))
            if item is not None and item.due_ms <= due_ms:  # else a stale entry: closed, received again later
                del self.open[(kind, item_id)]
                self.alerted[(kind, item_id)] = self.watermark
                overdue.append(item)
        return sorted(overdue)

    def snapshot_taken(self):
        unloaded, self.unloaded = self.unloaded, []
        self.closed_since_snapshot = set()
        return unloaded

    def needs_load(self, lookahead_ms):
        return self.watermark >= 0 and (self.loaded_to is None or self.watermark + lookahead_ms // 2 > self.loaded_to)

    def load(self, stored, up_to):
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
                self._add(item)
        self.loaded_to = up_to

    def forget_alerted(self):
        self.alerted = {key: at for key, at in self.alerted.items() if at >= self.watermark - self.horizon_ms}

    def _add(self, item):
        self.open[(item.kind, item.item_id)] = item
        heapq.heappush(self.heap, (item.due_ms, item.kind, item.item_id))


class Store:
    """What ClickHouse answers to load_open_items: received at a snapshot, not closed by the due time, not alerted."""

    def __init__(self):
        self.received, self.pending, self.closes, self.alerted = {}, [], {}, set()

    def snapshot(self):
        for item in self.pending:
            self.received.setdefault((item.kind, item.item_id), item)
        self.pending = []

    def open_items(self, after_ms, up_to_ms):
        return [item for key, item in self.received.items()
                if item.due_ms <= up_to_ms and (after_ms is None or item.due_ms > after_ms)
                and key not in self.alerted and self.closes.get(key, 1 << 62) > item.due_ms]


def drive(tracker, seed: int, records: int = 1500) -> list:
    """Random records of receipts and closings (some duplicated, some late), snapshots and loads;
    returns every alert as (watermark, item)."""
    rng = random.Random(seed)
    store = Store()
    alerts, watermark, start = [], 0, 10_000_000
    names = [f"HS-{i}" for i in range(600)]
    for n in range(records):
        now = start + n * 500
        for _ in range(rng.randrange(1, 8)):
            kind = rng.choice(("dossier", "dossier", "feedback"))
            item_id = rng.choice(names)
            occurred = now - rng.choice((0, 0, 0, 2_000, 90_000))
            if rng.random() < 0.5:
                due = occurred + rng.choice((5_000, 30_000, 100_000, 400_000))
                item = OpenItem(due, kind, item_id, "01", rng.choice(("STP", "CAT")), "1.0" if kind == "dossier" else "")
                tracker.opened(item)
                store.pending.append(item)
            else:
                due = rng.choice((None, occurred - 1_000, occurred + 50_000))
                tracker.closed_item(kind, item_id, occurred, due)
                key = (kind, item_id)
                store.closes[key] = min(store.closes.get(key, 1 << 62), occurred)
        tracker.settle(now)
        for item in tracker.advance(now - rng.randrange(0, 3_000)):
            alerts.append((tracker.watermark, item))
            store.alerted.add((item.kind, item.item_id))
        if n % 7 == 6:
            tracker.snapshot_taken()
            store.snapshot()
            if tracker.needs_load(LOOKAHEAD_MS):
                up_to = tracker.watermark + LOOKAHEAD_MS
                tracker.load(store.open_items(tracker.loaded_to, up_to), up_to)
                for item in tracker.advance(tracker.watermark):
                    alerts.append((tracker.watermark, item))
                    store.alerted.add((item.kind, item.item_id))
        if n % 50 == 49:
            tracker.forget_alerted()
        watermark = tracker.watermark
    assert watermark > start
    return alerts


@pytest.mark.parametrize("seed", range(6))
def test_columnar_tracker_raises_the_alerts_of_the_plain_model(monkeypatch, seed):
    monkeypatch.setattr(overdue, "SEAL_AT", 16)  # many segments, sealed and merged
    model, tracker = ModelTracker(HORIZON_MS), OverdueTracker(HORIZON_MS)
    expected = drive(model, seed)
    assert drive(tracker, seed) == expected
    assert len(expected) > 50
    assert len(tracker) == len(model)


def test_open_items_cost_tens_of_bytes_each():
    tracker = OverdueTracker(HORIZON_MS)
    tracker.advance(1_000)
    items = [OpenItem(10_000 + i, "dossier", f"000.00.21.H56-241122-{i:06d}", "01", "STP", "1.004227")
             for i in range(100_000)]
    tracker.load(items, 200_000)
    assert len(tracker) == 100_000
    assert tracker.nbytes / len(tracker) < 60  # the id is 27 bytes of it
