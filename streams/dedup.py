"""Memory of recently accepted event ids, per source partition.

Time is the record's timestamp, not the wall clock, so a replay of the same
records makes the same decisions. An event is a duplicate when its id was
accepted at most `horizon_ms` earlier (by record time). Ids are forgotten in
buckets of a tenth of the horizon, so memory holds at most 1.1 horizons of ids.
"""

from __future__ import annotations

from collections import deque


class RecentIds:
    __slots__ = ("horizon_ms", "bucket_ms", "_first_seen", "_buckets", "_current", "_current_start")

    def __init__(self, horizon_ms: int):
        self.horizon_ms = max(int(horizon_ms), 0)
        self.bucket_ms = max(self.horizon_ms // 10, 1)
        self._first_seen: dict = {}  # event_id -> record time it was accepted
        self._buckets: deque = deque()  # (bucket start, ids accepted in it), oldest first
        self._current: list = []
        self._current_start = -1

    def __len__(self) -> int:
        return len(self._first_seen)

    def _advance(self, ts_ms: int) -> None:
        start = ts_ms - ts_ms % self.bucket_ms
        if self._current:
            self._buckets.append((self._current_start, self._current))
        self._current = []
        self._current_start = start
        forget_before = start - self.horizon_ms - self.bucket_ms
        first_seen = self._first_seen
        while self._buckets and self._buckets[0][0] < forget_before:
            bucket_start, ids = self._buckets.popleft()
            bucket_end = bucket_start + self.bucket_ms
            for event_id in ids:
                seen = first_seen.get(event_id)
                if seen is not None and seen < bucket_end:  # not accepted again since
                    del first_seen[event_id]

    def add_if_new(self, event_id: str, ts_ms: int) -> bool:
        """Remember `event_id`; False when it was accepted within the horizon."""
        seen = self._first_seen.get(event_id)
        if seen is not None and ts_ms - seen <= self.horizon_ms:
            return False
        if ts_ms >= self._current_start + self.bucket_ms:
            self._advance(ts_ms)
        self._first_seen[event_id] = ts_ms
        self._current.append(event_id)
        return True

    def preload(self, ids_with_ts) -> None:
        """Rebuild from (event_id, ts_ms) pairs in ascending ts order."""
        for event_id, ts_ms in ids_with_ts:
            self.add_if_new(event_id, ts_ms)
