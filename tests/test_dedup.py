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


def test_sealed_tenths_answer_like_the_dict():
    """Ids older than the current tenth live in sorted arrays; the answers must not change."""
    ids = RecentIds(horizon_ms=10_000)
    assert ids.admit(["a", "b", None], 0) == [True, True, False]
    assert ids.admit(["c"], 2_500) == [True]  # "a" and "b" are sealed now
    assert ids.admit(["a", "c", "d", "d"], 9_999) == [False, False, True, False]
    assert ids.admit(["a", "b"], 10_001) == [True, True]  # past the horizon: accepted again
    assert ids.admit(["a"], 12_000) == [False]


def test_a_tenth_too_big_for_the_dict_is_merged_into_one_sorted_array(monkeypatch):
    import streams.dedup as dedup

    monkeypatch.setattr(dedup, "SEAL_AT", 100)
    ids = RecentIds(horizon_ms=600_000)
    for t in range(1_000):
        assert ids.admit([f"e{t}"], t) == [True]
    assert len(ids._sealed) == 1
    assert ids.admit([f"e{t}" for t in range(0, 1_000, 7)] + ["new"], 1_000) == [False] * 143 + [True]


def test_sealed_ids_cost_twelve_bytes():
    ids = RecentIds(horizon_ms=10_000)
    ids.admit([f"id-{i}" for i in range(50_000)], 0)
    ids.admit(["x"], 1_000)
    assert ids.sealed_bytes == 50_000 * 12


def test_known_looks_without_remembering():
    ids = RecentIds(horizon_ms=10_000)
    ids.admit(["a"], 0)
    ids.admit(["b"], 3_000)  # "a" is sealed now
    assert ids.known(["a", "b", "c"], 5_000) == [True, True, False]
    assert ids.known(["a"], 10_001) == [False]
    assert ids.known(["c"], 5_000) == [False]
    assert len(ids) == 2
