"""End to end on real servers: producers → Kafka → `opscentre worker` → ClickHouse → `opscentre kpi`."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import time

import pytest

from dashboards.kpi import CONTRACT_KEYS, EXTENSION_KEYS
from opscentre.catalogue import DEFAULT_AGENCIES
from opscentre.kafka import ensure_topics
from tests.workload import Workload, _ms, provinces_seen, read_dead_letters, truth

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
VN = dt.timezone(dt.timedelta(hours=7))


def _iso(ms: int, tz=UTC) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")


def run_kpi(pipeline, province: str, from_ms: int, to_ms: int) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "opscentre.cli", "kpi", "--province", province,
         "--from", _iso(from_ms, VN), "--to", _iso(to_ms), "--json"],
        env=pipeline.env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def stored_events(pipeline) -> int:
    store = pipeline.store()
    service = store.query(f"SELECT count() FROM {store.table('service_events')} FINAL")[0][0]
    security = store.query(f"SELECT count() FROM {store.table('security_events')} FINAL")[0][0]
    return int(service) + int(security)


def unknown_agencies(events, province: str, from_ms: int, to_ms: int) -> dict:
    counts: dict = {}
    for e in events:
        if (e["province"] == province and e["event_type"] != "security.alert"
                and e["agency"] not in DEFAULT_AGENCIES and from_ms <= _ms(e["occurred_at"]) < to_ms):
            counts[e["agency"]] = counts.get(e["agency"], 0) + 1
    return dict(sorted(counts.items()))


def assert_kpis_match(pipeline, events, periods, timeout_s: float = 30.0) -> None:
    """`opscentre kpi --province all` gives the events' truth for each period, within `timeout_s`:
    the hour, day and month rows follow the raw events by a pass (OPSCENTRE_DERIVE_INTERVAL_S, and
    longer after an outage), so a period that holds a whole hour may lag the stored events."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _kpis_match(pipeline, events, periods)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _kpis_match(pipeline, events, periods) -> None:
    for from_ms, to_ms in periods:
        results = {r["province"]: r for r in run_kpi(pipeline, "all", from_ms, to_ms)}
        expected_provinces = provinces_seen(events, from_ms, to_ms) | {
            p for p in results if truth(events, p, from_ms, to_ms)["dossiers_overdue_open"]
        }
        assert set(results) == expected_provinces
        for province, result in results.items():
            assert tuple(result) == CONTRACT_KEYS + EXTENSION_KEYS
            expected = truth(events, province, from_ms, to_ms)
            expected["unknown_agencies"] = unknown_agencies(events, province, from_ms, to_ms)
            got = {key: result[key] for key in expected}
            assert got == expected, f"province {province}, period {_iso(from_ms)}..{_iso(to_ms)}"


def test_mixed_stream_gives_exact_kpis_and_dead_letters(pipeline):
    settings = pipeline.settings
    ensure_topics(settings)
    start_ms = (int(time.time()) - 3 * 3600) // 60 * 60 * 1000 + 17_250
    workload = Workload(seed=11, start_ms=start_ms, events=3000, rate=10.0)  # ~5 minutes of event time
    for event in workload.valid[::97]:
        if event["event_type"] != "security.alert":
            event["agency"] = "SO-MOI"  # not in the catalogue: counted, and reported by `opscentre kpi`
    pipeline.start_worker()
    workload.send(settings)
    expected_events = workload.unique_valid()
    pipeline.wait_for(lambda: stored_events(pipeline) >= len(expected_events), what="all events stored")

    # Late events, hours after their windows were written, plus events long before the period.
    late = Workload(seed=12, start_ms=start_ms, events=300, rate=1.0).valid
    early = Workload(seed=13, start_ms=start_ms - 2 * 86_400_000, events=100, rate=10.0).valid
    workload.send(settings, events=late + early, with_bad=False)
    expected_events = workload.unique_valid(late + early)
    pipeline.wait_for(lambda: stored_events(pipeline) >= len(expected_events), what="late events stored")
    time.sleep(2)  # anything extra (a double count) would land now
    assert stored_events(pipeline) == len(expected_events)

    end_ms = start_ms + 300_000
    assert any(unknown_agencies(expected_events, p, start_ms, end_ms) for p in ("01", "79"))
    assert_kpis_match(pipeline, expected_events, [
        (start_ms - 3_600_000, end_ms + 3_600_000),   # whole minutes: per-minute tables only
        (start_ms + 61_500, start_ms + 200_250),      # partial minutes at both ends: raw edges
        (start_ms + 5_000, start_ms + 45_000),        # inside one minute
    ])

    letters = read_dead_letters(settings, expected=len(workload.bad))
    assert len(letters) == len(workload.bad)
    for letter in letters:
        assert letter["topic"] == settings.service_topic
        assert isinstance(letter["offset"], int) and isinstance(letter["partition"], int)
    for raw, reason in workload.bad:
        matches = [letter for letter in letters if same_payload(letter_original(letter), raw)]
        assert matches, f"no dead letter for {raw!r}"
        assert any(reason in letter["reason"] for letter in matches), (reason, [m["reason"] for m in matches])


def letter_original(letter: dict) -> bytes:
    if letter.get("original") is not None:
        return letter["original"].encode()
    return base64.b64decode(letter["original_base64"])


def same_payload(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return a == b


def test_same_kpis_with_embedded_clickhouse(pipeline, tmp_path):
    pipeline.use_clickhouse(f"chdb://{tmp_path}/chdb")
    settings = pipeline.settings
    ensure_topics(settings)
    start_ms = (int(time.time()) - 3600) // 60 * 60 * 1000
    workload = Workload(seed=21, start_ms=start_ms, events=1500, rate=10.0)
    worker = pipeline.start_worker()
    workload.send(settings)
    expected_events = workload.unique_valid()
    # chDB belongs to the worker process while it runs: `opscentre kpi` reads through it.
    from opscentre.local import scrape

    pipeline.wait_for(
        lambda: scrape(worker.metrics_port).get("opscentre_stream_events_valid_total", 0) >= len(expected_events),
        what="worker accepted all events",
    )
    time.sleep(1.5)
    periods = [(start_ms - 60_000, start_ms + 160_000), (start_ms + 30_500, start_ms + 100_100)]
    assert_kpis_match(pipeline, expected_events, periods)
    worker.stop()
    assert_kpis_match(pipeline, expected_events, periods)
