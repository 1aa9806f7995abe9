from streams.dedup import RecentIds


def test_duplicate_within_horizon_is_dropped():
    ids = RecentIds(horizon_ms=10_000)
    assert ids.add_if_new("a", 1_000)
    assert not ids.add_if_new("a", 9_000)
    assert ids.add_if_new("b", 9_000)


def test_forgotten_after_horizon_and_at_most_a_tenth_more():
    ids = RecentIds(horizon_ms=10_000)
    assert ids.add_if_new("a", 0)
    assert not ids.add_if_new("a", 10_999)
    assert ids.add_if_new("a", 12_000)


def test_preload_rebuilds_the_same_memory():
    ids = RecentIds(horizon_ms=10_000)
    ids.preload([("a", 100), ("b", 5_000)])
    assert not ids.add_if_new("b", 6_000)
    assert len(ids) == 2
