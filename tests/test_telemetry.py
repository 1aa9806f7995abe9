"""observe_many writes what one observe per amount writes."""

import random

import pytest

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from opscentre.measures import END_TO_END_BUCKETS
from opscentre.telemetry import observe_many


def exposition(registry) -> tuple[list, float]:
    """(every line but the sum's and the creation time's, the sum: added in another order, it may
    differ in its last bit)."""
    lines = generate_latest(registry).splitlines()
    (total,) = [float(line.split()[1]) for line in lines if line.startswith(b"latency_seconds_sum")]
    return [line for line in lines if b"_created" not in line and b"_sum" not in line], total


def test_observe_many_matches_one_observe_each():
    one_each, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("latency_seconds", "l", buckets=END_TO_END_BUCKETS, registry=one_each)
    at_once = Histogram("latency_seconds", "l", buckets=END_TO_END_BUCKETS, registry=many)
    rng = random.Random(3)
    # every bound itself (observe counts an amount equal to a bound in that bucket), and around them
    amounts = [b for b in END_TO_END_BUCKETS if b != float("inf")] + [0.0, 1e9]
    amounts += [rng.choice(amounts) * rng.choice((0.999, 1.0, 1.001)) for _ in range(5000)]
    for amount in amounts:
        by_one.observe(amount)
    observe_many(at_once, amounts[:100])
    observe_many(at_once, [])
    observe_many(at_once, amounts[100:])
    (lines, total), (lines_at_once, total_at_once) = exposition(one_each), exposition(many)
    assert lines == lines_at_once
    assert total_at_once == pytest.approx(total, rel=1e-12)
