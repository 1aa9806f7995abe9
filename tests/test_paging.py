"""Paging end to end on real servers: the worker, `opscentre alerts forward`, Alertmanager on the
generated routing, Prometheus with the generated rules scraping the worker, and a webhook receiver.

Dossiers going overdue page once each and resolve once after their completion, across a
forwarder SIGKILLed mid-stream; a replay of the same history into another database pages nobody;
a stopped worker pages the platform team.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaProducer

from dashboards.alerts import prometheus_rules
from dashboards.config import Config
from opscentre.events import routing_key
from opscentre.kafka import ensure_topics, partition_for
from opscentre.settings import Settings
from tests.alert_servers import PROMETHEUS_BINARY, start_prometheus
from tests.test_alert_forwarder import ALERTMANAGER_BINARY, Alerting, ForwarderProcess, wait_for
from tests.test_live_alerts import event, iso, received

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ALERTMANAGER_BINARY and PROMETHEUS_BINARY), reason="prometheus and alertmanager needed"),
]


def completed(dossier: str, at_ms: int, due_ms: int) -> dict:
    return event(f"c-{dossier}", "dossier.completed", at_ms, dossier_id=dossier, procedure_code="2.000815",
                 due_at=iso(due_ms), result="approved")


def test_overdue_dossiers_page_once_and_resolve_once_and_a_stopped_worker_pages(pipeline, tmp_path):
    pipeline.env["OPSCENTRE_IDLE_WATERMARK_S"] = "1"
    settings = pipeline.settings
    ensure_topics(settings)
    alerting = Alerting(tmp_path)
    worker = pipeline.start_worker()

    class Topic:  # the worker's alerts topic, for ForwarderProcess
        pass

    topic = Topic()
    topic.settings = settings
    forwarders = [ForwarderProcess(topic, alerting, tmp_path / "forwarder0.log")]
    out = tmp_path / "generated"
    prometheus_rules.write(out, Config.from_settings(Settings(
        prometheus_worker_targets=f"127.0.0.1:{worker.metrics_port}",
        prometheus_forwarder_targets=f"127.0.0.1:{forwarders[0].metrics_port}",
        prometheus_alertmanagers=alerting.url.split("//", 1)[1], prometheus_scrape_interval_s=1.0,
        alert_down_for_s=3.0)))
    prometheus = start_prometheus(out / prometheus_rules.PROMETHEUS_FILE, tmp_path)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.split(","), acks="all")

    def send(*events) -> None:
        for e in events:
            producer.send(settings.service_topic, key=routing_key(e).encode(), value=json.dumps(e).encode(),
                          partition=partition_for(routing_key(e), settings.partitions))
        producer.flush()

    def pages() -> dict:
        """item_ref -> the statuses it was notified with, in order, repeats collapsed (business alerts,
        duty desk): a group's notification lists every alert of the group still firing, which pages
        nobody again; a second page would show as firing after resolved."""
        collapsed = {}
        for item_ref, seen in alerting.pages().items():
            collapsed[item_ref] = [status for n, status in enumerate(seen) if n == 0 or seen[n - 1] != status]
        return collapsed

    try:
        now = int(time.time() * 1000)
        first_due, second_due = now + 6_000, now + 40_000
        stays_open = [received(f"HS-open-{n}", now, first_due) for n in range(4)]
        closed_late = [received(f"HS-late-{n}", now, first_due) for n in range(4)]
        in_time = [received(f"HS-ok-{n}", now, first_due) for n in range(3)]
        later = [received(f"HS-later-{n}", now, second_due) for n in range(4)]
        send(*stays_open, *closed_late, *in_time, *later,
             *(completed(f"HS-ok-{n}", now + 1_000, first_due) for n in range(3)))
        wait_for(lambda: len(pages()) >= 8, 90, "eight overdue dossiers paged", forwarders)

        # The forwarder dies mid-stream; the late completions and the second wave arrive meanwhile.
        forwarders[0].stop(signal.SIGKILL)
        send(*(completed(f"HS-late-{n}", int(time.time() * 1000), first_due) for n in range(4)))
        forwarders.append(ForwarderProcess(topic, alerting, tmp_path / "forwarder1.log"))
        wait_for(lambda: len(pages()) >= 12 and sum("resolved" in s for s in pages().values()) >= 4, 120,
                 "the second wave paged and the late completions resolved", forwarders)
        time.sleep(4)  # a repeat would land now

        statuses = pages()
        assert len(statuses) == 12  # 4 open + 4 closed late + 4 later; the 3 completed in time never paged
        assert sorted(statuses.values()).count(["firing", "resolved"]) == 4
        assert sorted(statuses.values()).count(["firing"]) == 8

        # A replay of the same history into another database raises the same alerts, marked: nobody is paged.
        result = subprocess.run(
            [sys.executable, "-m", "opscentre.cli", "replay", "--from-offsets", "earliest", "--into",
             pipeline.store().database + "_whatif"], env=pipeline.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        time.sleep(6)
        assert pages() == statuses

        # The worker stops: Prometheus's rule pages the platform team.
        worker.stop()
        down = alerting.recorder.wait_for(
            lambda r: r["path"] == "/platform" and any(
                a["labels"]["alertname"] == "OpscentreWorkerDown" for a in json.loads(r["body"])["alerts"]),
            timeout_s=60, what="the worker-down page")
        assert down
    finally:
        producer.close()
        for forwarder in forwarders:
            forwarder.stop(signal.SIGKILL)
        prometheus.stop()
        alerting.stop()
