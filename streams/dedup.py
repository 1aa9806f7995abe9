"""Memory of recently accepted event ids, per source partition.

Time is the record's timestamp, not the wall clock, so a replay of the same
records makes the same decisions. An event is a duplicate when its id was
accepted at most `horizon_ms` earlier (by record time).

Ids are remembered as 64-bit hashes. The ids accepted in the current tenth of
the horizon sit in a dict; older ones are sealed into sorted numpy arrays, one
per tenth, with the acceptance time beside each hash as a 32-bit offset: 12
bytes an id. A sealed tenth is forgotten as a whole once all its times are
past the horizon, so memory holds at most 1.2 horizons of ids. Lookups in the
sealed arrays are vectorised over a record's events, or over a run of records
looked up beforehand (`prefetch`).

Two different ids share a hash with probability 2^-64: with n ids remembered,
a new event is wrongly taken for a duplicate with probability about n / 2^64
(3 million ids: 1.6e-13 an event).
"""

from __future__ import annotations

import numpy as np

SEAL_AT = 1 << 17  # ids in the dict before they are merged into the sorted arrays of their tenth
NOT_SEEN = -(1 << 62)  # the time of a hash no sealed tenth holds: before any horizon


class _Sealed:
    """Sorted hashes of one tenth of the horizon and the times they were accepted."""

    __slots__ = ("start", "hashes", "offsets", "base", "max_ts")

    def __init__(self, start: int, hashes: np.ndarray, times: np.ndarray):
        order = np.argsort(hashes, kind="stable")
        self.start = start
        self.hashes = hashes[order]
        self.base = int(times.min())
        self.offsets = (times[order] - self.base).astype(np.uint32)
        self.max_ts = int(times.max())

    def times(self) -> np.ndarray:
        return self.offsets.astype(np.int64) + self.base

    def merged(self, hashes: np.ndarray, times: np.ndarray) -> "_Sealed":
        return _Sealed(self.start, np.concatenate((self.hashes, hashes)), np.concatenate((self.times(), times)))

    def times_of(self, queries: np.ndarray) -> np.ndarray:
        """For each of `queries` (hashes), the record time this tenth accepted it at, or NOT_SEEN."""
        idx = np.searchsorted(self.hashes, queries, side="right") - 1
        np.maximum(idx, 0, out=idx)
        return np.where(self.hashes[idx] == queries, self.offsets[idx].astype(np.int64) + self.base, NOT_SEEN)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.offsets.nbytes


class RecentIds:
    __slots__ = ("horizon_ms", "bucket_ms", "_pending", "_pending_start", "_sealed", "_latest", "_prefetched")

    def __init__(self, horizon_ms: int):
        self.horizon_ms = max(int(horizon_ms), 0)
        self.bucket_ms = max(self.horizon_ms // 10, 1)
        self._pending: dict = {}  # hash -> record time accepted, for the current tenth
        self._pending_start = None
        self._sealed: list = []  # _Sealed, oldest first
        self._latest = None
        # (the sealed list looked in, {hash: latest time a sealed tenth accepted it, or NOT_SEEN}): set by
        # prefetch(); any change to the sealed tenths makes a new list, which retires it.
        self._prefetched = None

    def __len__(self) -> int:
        return len(self._pending) + sum(len(s.hashes) for s in self._sealed)

    @property
    def sealed_bytes(self) -> int:
        return sum(s.nbytes for s in self._sealed)

    def admit(self, ids: list, ts_ms: int) -> list:
        """Remember the ids of one record; for each, False when it was accepted within the horizon.

        An id of None is not looked at and comes back False (an event rejected for another reason).
        """
        return self._admit(ids, [0 if i is None else hash(i) for i in ids], ts_ms)

    def admit_keys(self, keys: list, ts_ms: int) -> list:
        """admit() for callers that already hold hash(id) of each id (none of them None)."""
        return self._admit(keys, keys, ts_ms)

    def _admit(self, ids: list, hashes: list, ts_ms: int) -> list:
        fresh = self._check(ids, hashes, ts_ms)
        self.remember(hashes, fresh, ts_ms)
        return fresh

    def check(self, ids: list, ts_ms) -> tuple[list, list]:
        """admit() in two steps, for a caller that may still drop the record: (fresh flags, hashes)
        now, and remember(hashes, fresh, ts_ms) once the record is applied.

        `ts_ms` may also be a list, each id's own record time: the ids of a run of records, all in
        one tenth of the horizon, checked together exactly as record by record."""
        hashes = [0 if i is None else hash(i) for i in ids]
        return self._check(ids, hashes, ts_ms), hashes

    def _check(self, ids: list, hashes: list, ts_ms) -> list:
        if not ids:  # a record with no event to look at: its time changes nothing
            return []
        times = ts_ms if type(ts_ms) is list else None
        first = ts_ms if times is None else times[0]
        start = first - first % self.bucket_ms
        if start != self._pending_start:
            self._seal()
            self._pending_start = start
            self._forget(first)
        elif len(self._pending) >= SEAL_AT:
            self._seal()
        horizon = self.horizon_ms
        old = self._in_sealed(hashes, first - horizon if times is None else [t - horizon for t in times])
        pending = self._pending
        # Repeats inside the record or the run: within one tenth they are all within the horizon.
        within: set = set()
        fresh = []
        for position, (event_id, h, seen_in_sealed) in enumerate(zip(ids, hashes, old)):
            if event_id is None or seen_in_sealed or h in within:
                fresh.append(False)
                continue
            seen = pending.get(h)
            if seen is not None and (first if times is None else times[position]) - seen <= horizon:
                fresh.append(False)
                continue
            within.add(h)
            fresh.append(True)
        return fresh

    def remember(self, hashes: list, fresh: list, ts_ms) -> None:
        pending = self._pending
        if type(ts_ms) is list:
            for h, is_fresh, t in zip(hashes, fresh, ts_ms):
                if is_fresh:
                    pending[h] = t
            return
        for h, is_fresh in zip(hashes, fresh):
            if is_fresh:
                pending[h] = ts_ms

    def known(self, ids: list, ts_ms: int) -> list:
        """For each id, whether it was remembered within the horizon before `ts_ms`; remembers nothing."""
        return self.known_keys([hash(i) for i in ids], ts_ms)

    def known_keys(self, hashes: list, ts_ms: int) -> list:
        """known() for callers that already hold hash(id) of each id."""
        earliest = ts_ms - self.horizon_ms
        found = self._in_sealed(hashes, earliest)
        pending = self._pending
        return [f or (pending.get(h, -1) >= earliest and h in pending) for f, h in zip(found, hashes)]

    def prefetch(self, hashes: list) -> None:
        """Look hashes up in the sealed tenths at once, for a run of records about to be checked one by
        one: their look-ups then cost a dict access instead of numpy calls each."""
        if not self._sealed or not hashes:
            self._prefetched = None
            return
        self._prefetched = (self._sealed, dict(zip(hashes, self._sealed_times(hashes).tolist())))

    def _sealed_times(self, hashes: list) -> np.ndarray:
        """For each hash, the latest record time at which a sealed tenth accepted it, or NOT_SEEN."""
        queries = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
        latest = np.full(len(hashes), NOT_SEEN, dtype=np.int64)
        for sealed in self._sealed:
            np.maximum(latest, sealed.times_of(queries), out=latest)
        return latest

    def _in_sealed(self, hashes: list, earliest):
        """For each hash, whether a sealed tenth accepted it at or after `earliest` (one time, or one
        per hash)."""
        if not self._sealed:
            return (False,) * len(hashes)
        prefetched = self._prefetched
        if prefetched is not None and prefetched[0] is self._sealed:
            times = prefetched[1]
            try:
                if type(earliest) is list:
                    return [times[h] >= e for h, e in zip(hashes, earliest)]
                return [times[h] >= earliest for h in hashes]
            except KeyError:  # not prefetched
                pass
        times = self._sealed_times(hashes)
        return (times >= (np.asarray(earliest, dtype=np.int64))).tolist()

    def add_if_new(self, event_id: str, ts_ms: int) -> bool:
        return self.admit([event_id], ts_ms)[0]

    def _seal(self) -> None:
        if not self._pending:
            return
        hashes = np.fromiter(self._pending.keys(), dtype=np.int64, count=len(self._pending))
        times = np.fromiter(self._pending.values(), dtype=np.int64, count=len(self._pending))
        self._pending = {}
        latest = int(times.max())
        if self._latest is None or latest > self._latest:
            self._latest = latest
        last = self._sealed[-1] if self._sealed else None
        if last is not None and last.start == self._pending_start:
            self._sealed = self._sealed[:-1] + [last.merged(hashes, times)]  # a new list: see _prefetched
        else:
            self._sealed = self._sealed + [_Sealed(self._pending_start, hashes, times)]

    def _forget(self, ts_ms: int) -> None:
        # Keep a tenth of slack so record times that step back a little still find their ids.
        latest = ts_ms if self._latest is None else max(ts_ms, self._latest)
        forget_before = latest - self.horizon_ms - self.bucket_ms
        self._sealed = [s for s in self._sealed if s.max_ts >= forget_before]

    def preload(self, ids_with_ts) -> None:
        """Rebuild from (event_id, ts_ms) pairs in ascending ts order."""
        group, group_ts = [], None
        for event_id, ts_ms in ids_with_ts:
            if ts_ms != group_ts and group:
                self.admit(group, group_ts)
                group = []
            group_ts = ts_ms
            group.append(event_id)
        if group:
            self.admit(group, group_ts)
