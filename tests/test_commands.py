"""The producer commands and `opscentre run`, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from opscentre.kafka import ensure_topics
from tests.test_pipeline import assert_kpis_match, stored_events
from tests.workload import Workload, read_dead_letters

pytestmark = pytest.mark.integration


def test_ingest_routes_events_and_sends_bad_lines_for_rejection(pipeline, tmp_path):
    settings = pipeline.settings
    ensure_topics(settings)
    start_ms = (int(time.time()) - 3600) // 60 * 60 * 1000
    events = Workload(seed=41, start_ms=start_ms, events=800, rate=10.0).valid
    path = tmp_path / "events.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for n, event in enumerate(events):
            handle.write(json.dumps(event, ensure_ascii=False) + "\n")
            if n == 100:
                handle.write("\n")
                handle.write("{broken json\n")
            if n == 200:
                handle.write("[1, 2]\n")
    result = subprocess.run([sys.executable, "-m", "opscentre.cli", "ingest", str(path)], env=pipeline.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{path}:103: not JSON" in result.stderr
    assert f"{path}:204: not a JSON object" in result.stderr
    assert "800 events sent, 2 lines not JSON objects" in result.stderr
    pipeline.start_worker()
    pipeline.wait_for(lambda: stored_events(pipeline) >= len(events), what="ingested events stored")
    assert_kpis_match(pipeline, events, [(start_ms - 60_000, start_ms + 120_000)])
    # `[1, 2]` is a batch to the worker: each of its items is rejected on its own.
    letters = read_dead_letters(settings, expected=3)
    assert sorted(letter["original"] for letter in letters) == ["1", "2", "{broken json"]
    assert {letter["reason"] for letter in letters} >= {"item is a JSON number, not an event object"}


def _descendants(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in open(f"/proc/{pid}/task/{task}/children").read().split():
            found += [int(child), *_descendants(int(child))]
    return found


def test_run_stores_every_event_and_leaves_nothing_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSCENTRE_")}
    env.update(OPSCENTRE_METRICS_ADDR="127.0.0.1:0", OPSCENTRE_GROUP_SESSION_TIMEOUT_S="6",
               OPSCENTRE_GROUP_REBALANCE_TIMEOUT_S="5", OPSCENTRE_GROUP_HEARTBEAT_S="1")
    from opscentre.embedded import free_port

    env["OPSCENTRE_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
    run = subprocess.Popen([sys.executable, "-m", "opscentre.cli", "run", "--rate", "1000", "--duration", "8",
                            "--seed", "3", "--steady"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    children: set = set()
    deadline = time.monotonic() + 60  # a loaded machine starts them later than an idle one
    while len(children) < 3 and time.monotonic() < deadline and run.poll() is None:
        try:
            children.update(_descendants(run.pid))
        except FileNotFoundError:  # a process that ended while it was listed
            pass
        time.sleep(0.2)
    assert len(children) >= 3  # broker, worker, simulator
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr
    assert "opscentre run: stopped" in stderr
    time.sleep(1)
    assert [pid for pid in children if os.path.exists(f"/proc/{pid}") and
            open(f"/proc/{pid}/stat").read().split()[2] != "Z"] == []

    from opscentre.clickhouse import connect

    store = connect(f"chdb://{tmp_path}/var/clickhouse")
    total = store.query(
        f"SELECT (SELECT count() FROM {store.table('service_events')} FINAL) "
        f"+ (SELECT count() FROM {store.table('security_events')} FINAL)"
    )[0][0]
    assert total == 8000


def test_run_stops_cleanly_on_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSCENTRE_")}
    from opscentre.embedded import free_port

    env["OPSCENTRE_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
    run = subprocess.Popen([sys.executable, "-m", "opscentre.cli", "run", "--rate", "500"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    children = _descendants(run.pid)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr
    time.sleep(1)
    assert [pid for pid in children if os.path.exists(f"/proc/{pid}") and
            open(f"/proc/{pid}/stat").read().split()[2] != "Z"] == []
