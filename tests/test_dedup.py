from streams.dedup import RecentIds


def test_duplicate_within_horizon_is_dropped():
    ids = RecentIds(horizon_ms=10_000)
    assert ids.add_if_new("a", 1_000)
    assert not ids.add_if_new("a", 9_000)
    assert ids.add_if_new("b", 9_000)


def test_horizon_is_exact_by_record_time():
    ids = RecentIds(horizon_ms=10_000)
    assert ids.add_if_new("a", 0)
    assert not ids.add_if_new("a", 10_000)
    assert ids.add_if_new("a", 10_001)  # accepted again: remembered from here
    assert not ids.add_if_new("a", 15_000)


def test_memory_is_bounded_to_about_one_horizon():
    ids = RecentIds(horizon_ms=10_000)
    for t in range(0, 100_000, 10):
        ids.add_if_new(f"e{t}", t)
    assert len(ids) <= 1_100 + 100  # 1.1 horizons of ids at 100 ids/s, plus the current bucket


def test_preload_rebuilds_the_same_memory():
    ids = RecentIds(horizon_ms=10_000)
    ids.preload([("a", 100), ("b", 5_000)])
    assert not ids.add_if_new("b", 6_000)
    assert len(ids) == 2
