"""Memory of recently accepted event ids, per source partition.

Time is the record's timestamp, not the wall clock, so a replay of the same
records makes the same decisions. Ids live in buckets of a tenth of the
horizon; a whole bucket is forgotten at once, so an id is remembered for
between 1.0 and 1.1 horizons.
"""

from __future__ import annotations

from collections import deque


class RecentIds:
    __slots__ = ("horizon_ms", "bucket_ms", "_buckets", "_current", "_current_start")

    def __init__(self, horizon_ms: int):
        self.horizon_ms = max(int(horizon_ms), 1)
        self.bucket_ms = max(self.horizon_ms // 10, 1)
        self._buckets: deque[tuple[int, set]] = deque()  # (bucket start, ids), oldest first
        self._current: set = set()
        self._current_start = -1

    def __len__(self) -> int:
        return len(self._current) + sum(len(ids) for _, ids in self._buckets)

    def _advance(self, ts_ms: int) -> None:
        start = ts_ms - ts_ms % self.bucket_ms
        if start <= self._current_start:
            return
        if self._current:
            self._buckets.append((self._current_start, self._current))
        self._current = set()
        self._current_start = start
        oldest_kept = start - self.horizon_ms
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._buckets.popleft()

    def add_if_new(self, event_id: str, ts_ms: int) -> bool:
        """Remember `event_id`; False when it was seen within the horizon."""
        if ts_ms > self._current_start:
            self._advance(ts_ms)
        if event_id in self._current:
            return False
        for _, ids in self._buckets:
            if event_id in ids:
                return False
        self._current.add(event_id)
        return True

    def preload(self, ids_with_ts) -> None:
        """Rebuild from (event_id, ts_ms) pairs in ascending ts order."""
        for event_id, ts_ms in ids_with_ts:
            self.add_if_new(event_id, ts_ms)
