"""Exact KPIs whatever the delivery: crash, rebalance, replay, late data, ClickHouse outage."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from opscentre.kafka import ensure_topics
from tests.harness import ClickHouseServer
from tests.test_pipeline import assert_kpis_match, stored_events
from tests.workload import Workload

pytestmark = pytest.mark.integration


def start_of_minute_ms(hours_ago: float) -> int:
    return int(time.time() - hours_ago * 3600) // 60 * 60 * 1000


def send_in_background(workload, settings, seconds, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=workload.send, args=(settings,), kwargs=dict(seconds=seconds, **kwargs))
    thread.start()
    return thread


def periods(start_ms):
    return [(start_ms - 3_600_000, start_ms + 3_600_000), (start_ms + 90_500, start_ms + 250_250)]


def settle(pipeline, expected_count) -> None:
    try:
        pipeline.wait_for(lambda: stored_events(pipeline) >= expected_count, what="all events stored", timeout_s=120)
    except AssertionError as exc:
        raise AssertionError(f"{expected_count} events expected\n{progress_report(pipeline)}\n{exc}") from None
    time.sleep(2)


def progress_report(pipeline) -> str:
    """Per event partition: the end offset the broker reports (Tansu's is the last batch's first
    offset + 1), the group's committed offset, and the stored events (count, highest source
    offset): tells a stalled worker from events lost on the way."""
    from kafka import KafkaConsumer, TopicPartition

    settings = pipeline.settings
    # Never subscribes: reads the group's committed offsets without joining it.
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.split(","), group_id=settings.consumer_group,
                             enable_auto_commit=False)
    try:
        store = pipeline.store()
        lines = []
        for topic, table in ((settings.service_topic, "service_events"), (settings.security_topic, "security_events")):
            stored = {int(p): (int(n), int(o)) for p, n, o in store.query(
                f"SELECT source_partition, count(), max(source_offset) FROM {store.table(table)} FINAL "
                "GROUP BY source_partition")}
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            for tp, end in sorted(consumer.end_offsets(partitions).items()):
                count, highest = stored.get(tp.partition, (0, -1))
                lines.append(f"{topic}[{tp.partition}]: reported end {end}, committed {consumer.committed(tp)}, "
                             f"stored {count} events up to offset {highest}")
        return "\n".join(lines)
    except Exception as exc:  # a report, not the assertion
        return f"(no progress report: {exc})"
    finally:
        consumer.close(autocommit=False)


def assert_exact_once_sent(pipeline, sender, workload, start_ms) -> None:
    """After the sender finishes: every valid event stored once and every KPI exact."""
    sender.join()
    expected = workload.unique_valid()
    settle(pipeline, len(expected))
    assert stored_events(pipeline) == len(expected)
    assert_kpis_match(pipeline, expected, periods(start_ms))


def test_worker_killed_mid_stream_and_restarted(pipeline):
    ensure_topics(pipeline.settings)
    start_ms = start_of_minute_ms(2)
    workload = Workload(seed=31, start_ms=start_ms, events=6000, rate=20.0)
    worker = pipeline.start_worker()
    # Started first: on a loaded machine a worker still starting finds the whole workload sent,
    # stores it in one snapshot, and the kill lands after the stream.
    pipeline.metrics(worker)
    # Half the events as records of their own, between batches in the same partitions: the worker
    # applies them in runs, and the kill lands inside one.
    sender = send_in_background(workload, pipeline.settings, seconds=20, with_bad=False, singles_share=0.5)
    pipeline.wait_for(lambda: stored_events(pipeline) > 1000, what="worker under way")
    worker.stop(signal.SIGKILL)
    assert stored_events(pipeline) < 5900, "the kill must land mid-stream"
    pipeline.start_worker()
    assert_exact_once_sent(pipeline, sender, workload, start_ms)


def test_second_worker_joins_then_leaves(pipeline):
    ensure_topics(pipeline.settings)
    start_ms = start_of_minute_ms(2)
    workload = Workload(seed=32, start_ms=start_ms, events=8000, rate=25.0)
    pipeline.start_worker()
    sender = send_in_background(workload, pipeline.settings, seconds=36, with_bad=False, singles_share=0.5)
    pipeline.wait_for(lambda: stored_events(pipeline) > 1000, what="first worker under way")
    second = pipeline.start_worker()
    # On a loaded machine the second worker may still be starting when the first alone has stored
    # most of the events: wait until it reads partitions it took over.
    pipeline.wait_for(lambda: pipeline.metrics(second).get("opscentre_stream_partitions_owned", 0) > 0,
                      what="second worker holding partitions")
    pipeline.wait_for(lambda: stored_events(pipeline) > 4000, what="both workers under way")
    # Every hand-over stores and commits what the worker giving partitions up has processed:
    # the worker taking them over redoes no record.
    assert pipeline.metrics(second)["opscentre_stream_records_already_applied_total"] == 0
    second.stop(signal.SIGTERM)
    assert second.process.returncode != -signal.SIGKILL, "a worker sent SIGTERM must store what it holds and exit"
    assert_exact_once_sent(pipeline, sender, workload, start_ms)
    assert pipeline.metrics(pipeline.workers[0])["opscentre_stream_records_already_applied_total"] == 0


def replay(pipeline, *args) -> str:
    result = subprocess.run([sys.executable, "-m", "opscentre.cli", "replay", *args], env=pipeline.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_replay_twice_changes_nothing_and_into_reproduces(pipeline):
    ensure_topics(pipeline.settings)
    start_ms = start_of_minute_ms(2)
    workload = Workload(seed=33, start_ms=start_ms, events=3000, rate=10.0)
    worker = pipeline.start_worker()
    workload.send(pipeline.settings)
    expected = workload.unique_valid()
    settle(pipeline, len(expected))
    worker.stop()
    assert_kpis_match(pipeline, expected, periods(start_ms))

    replay(pipeline, "--from-offsets", "earliest")
    replay(pipeline, "--from-offsets", "earliest")
    assert stored_events(pipeline) == len(expected)
    assert_kpis_match(pipeline, expected, periods(start_ms))

    # A what-if copy from the same offsets gives the same numbers.
    replay(pipeline, "--from-offsets", "earliest", "--into", pipeline.store().database + "_copy")
    pipeline.use_clickhouse(pipeline.env["OPSCENTRE_CLICKHOUSE"] + "_copy")
    assert_kpis_match(pipeline, expected, periods(start_ms))


def test_clickhouse_unreachable_for_30_seconds(kafka_bootstrap, tmp_path):
    from tests.harness import Pipeline

    server = ClickHouseServer().start()
    pipeline = Pipeline(kafka_bootstrap, server.url("outage"), tmp_path)
    pipeline.env["OPSCENTRE_CLICKHOUSE_TIMEOUT_S"] = "5"
    pipeline.env["OPSCENTRE_STALL_WARNING_S"] = "10"
    try:
        ensure_topics(pipeline.settings)
        start_ms = start_of_minute_ms(2)
        workload = Workload(seed=34, start_ms=start_ms, events=5000, rate=20.0)
        worker = pipeline.start_worker()
        sender = send_in_background(workload, pipeline.settings, seconds=20)
        pipeline.wait_for(lambda: stored_events(pipeline) > 500, what="worker under way")
        server.stop(keep_data=True)
        time.sleep(30)
        assert worker.running(), "the worker must wait for ClickHouse, not exit"
        assert re.search(r"stored nothing for \d+ s while holding processed records; "
                         r"a ClickHouse write in flight for \d+ s", open(worker.log_path, encoding="utf-8").read()), \
            "a worker that stores nothing must say what it waits for"
        server.start()
        assert_exact_once_sent(pipeline, sender, workload, start_ms)
    finally:
        pipeline.stop_all()
        server.stop()
