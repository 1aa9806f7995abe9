"""The lifecycle's transitions against the lifecycle view's definitions (unit level).

Random receipts and closings of items, in any order (a closing before its receipt within the
horizon, repeated receipts), through `Lifecycle.apply` with small segments; for many instants t
the sums of the transitions before t must equal, item by item as the lifecycle view defines them,
the items open (received at r < t, not closed before t) and overdue open (due at d < t, not closed
before t). The same rules end to end on ClickHouse: tests/test_read_side.py.
"""

from __future__ import annotations

import random

import pytest

import streams.lifecycle as lifecycle
from streams.lifecycle import Lifecycle

HORIZON_MS = 600_000


def counts_from_marks(marks: list, t: int) -> tuple[int, int]:
    opened = overdue = 0
    for m in marks:
        opened += m.open_entered * (m.open_entered_ms < t) - m.open_left * (m.open_left_ms < t)
        overdue += m.overdue_entered * (m.overdue_entered_ms < t) - m.overdue_left * (m.overdue_left_ms < t)
    return opened, overdue


def counts_from_items(items: dict, t: int) -> tuple[int, int]:
    opened = overdue = 0
    for item in items.values():
        if item["r"] is None:
            continue
        c = item["c"] if item["c"] is not None else float("inf")
        opened += item["r"] < t <= c
        overdue += item["d"] < t <= c
    return opened, overdue


@pytest.mark.parametrize("seed", range(8))
def test_transitions_give_the_lifecycle_views_counts(monkeypatch, seed):
    monkeypatch.setattr(lifecycle, "SEAL_AT", 64)
    rnd = random.Random(seed)
    state = Lifecycle(HORIZON_MS)
    truth: dict = {}  # item -> {r, d, c}: first receipt, its due, first closing (as the rules keep them)
    marks: list = []
    record_ms = 1_800_000_000_000
    pending_receipts = []  # receipts held back to arrive after their closing (out of order)
    n_items = 0
    for step in range(3000):
        record_ms += rnd.randrange(0, 2000)
        events = []
        for _ in range(rnd.randrange(1, 6)):
            roll = rnd.random()
            if roll < 0.35 or not truth:
                n_items += 1
                item = f"HS-{n_items}"
                r = record_ms - rnd.randrange(0, 3_600_000)
                d = r + rnd.choice([-60_000, 0, 60_000, 3_600_000, 86_400_000])
                receipt = ("dossier", item, r, d, "01", "STP", "1.0")
                if rnd.random() < 0.1:
                    pending_receipts.append((record_ms, receipt))  # its closing comes first
                    truth[item] = {"r": None, "d": d, "c": None, "late_receipt": (r, d)}
                else:
                    truth[item] = {"r": r, "d": d, "c": None}
                    events.append(receipt)
            elif roll < 0.75:
                item = rnd.choice(list(truth))
                entry = truth[item]
                c = record_ms - rnd.randrange(0, 7_200_000)
                if entry["c"] is None:
                    entry["c"] = c
                    entry["closed_at"] = record_ms
                    events.append(("dossier", item, c))
            elif roll < 0.85:
                item = rnd.choice(list(truth))  # a repeated receipt: ignored (after a closing, within the horizon)
                entry = truth[item]
                if entry["r"] is not None and (entry["c"] is None or record_ms - entry["closed_at"] < HORIZON_MS // 2):
                    events.append(("dossier", item, entry["r"] + 1000, entry["d"] + 5000, "01", "STP", "1.0"))
            elif pending_receipts:
                held_at, receipt = pending_receipts.pop(0)
                if record_ms - held_at < HORIZON_MS // 2:  # within the horizon of its closing
                    truth[receipt[1]]["r"] = receipt[2]
                    events.append(receipt)
                else:
                    del truth[receipt[1]]  # never sent
        for item_marks, _ in state.apply(events, record_ms):
            marks.append(item_marks)
    sent = {k: v for k, v in truth.items() if v["r"] is not None}
    times = sorted({e for v in sent.values() for e in (v["r"], v["d"], v["c"] or 0)})
    for t in rnd.sample(times, 200) + [t + 1 for t in rnd.sample(times, 200)]:
        assert counts_from_marks(marks, t) == counts_from_items(sent, t), t
    assert len(state) == sum(1 for v in sent.values() if v["c"] is None)


def test_closed_before_received_pairs_within_the_horizon():
    state = Lifecycle(HORIZON_MS)
    t0 = 1_800_000_000_000
    ((marks, item),) = state.apply([("dossier", "A", t0 + 5000)], t0)
    assert item is None and marks.open_entered == marks.overdue_entered == 0
    ((marks, _),) = state.apply([("dossier", "A", t0, t0 + 1000, "01", "STP", "p")], t0 + 60_000)
    assert (marks.open_entered_ms, marks.open_entered, marks.open_left_ms, marks.open_left) == (t0, 1, t0 + 5000, 1)
    assert (marks.overdue_entered_ms, marks.overdue_left_ms, marks.overdue_left) == (t0 + 1000, t0 + 5000, 1)
    ((again, _),) = state.apply([("dossier", "A", t0, t0 + 1000, "01", "STP", "p")], t0 + 61_000)
    assert again.open_entered == again.overdue_entered == 0  # a repeat
    assert len(state) == 0
