"""`opscentre alerts forward`: business alerts from the alerts topic to Alertmanager, paged once.

Unit tests first (the message format, one partition's fold, the alert posted, the dispatcher's
retries with a stand-in client, memory for 100,000 alerts), then real servers: Tansu, Debian's
Alertmanager 0.25 on the routing `dashboards/alerts/alertmanager.py` generates (a business team
whose webhook is a recorder), and `opscentre alerts forward` as a child process. Tests produce
firing and resolved messages into their own alerts topic. Every alert of a test has its own
agency, so Alertmanager's grouping (alertname, province, agency, severity) gives each alert its
own notifications and "paged once" can be counted exactly; where alerts share a group, that is
the point of the test. The last test runs the real worker.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from dashboards.alerts import alertmanager
from dashboards.config import Config
from opscentre.alerts import BadAlertMessage, decode_alert
from opscentre.catalogue import default_catalogue
from opscentre.embedded import free_port
from opscentre.kafka import ensure_topics
from opscentre.provinces import load_provinces
from opscentre.settings import Settings
from sinks.alertmanager import (
    ALERT_KINDS,
    Alert,
    AlertmanagerUnavailable,
    ClosedIds,
    Dispatcher,
    Names,
    PartitionBook,
    alert_body,
)
from tests.alert_servers import ALERTMANAGER_BINARY, Recorder, start_alertmanager
from tests.harness import unique_name

UTC = dt.UTC
NAMES = Names(load_provinces(None), default_catalogue())
needs_alertmanager = pytest.mark.skipif(not os.path.exists(ALERTMANAGER_BINARY),
                                        reason="prometheus-alertmanager not installed")


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def firing(name: str, *, agency: str | None = None, kind: str = "dossier.overdue", province: str = "01",
           procedure: str | None = "1.004227", ago_s: float = 30, **changes) -> dict:
    """An alert message as the worker writes it; `name` stands for the dossier or feedback id."""
    item_ref = hashlib.sha256(f"{kind}:{name}".encode()).hexdigest()
    now = dt.datetime.now(UTC)
    message = {
        "alert_id": f"{kind}:{item_ref[:32]}", "type": kind, "province": province,
        "agency": agency or "AG-" + name, "procedure_code": procedure, "item_ref": item_ref,
        "due_at": iso(now - dt.timedelta(seconds=ago_s + 60)), "detected_at": iso(now - dt.timedelta(seconds=ago_s)),
        "replayed": False, "source": {"partition": 0, "offset": 0}, "status": "firing",
    }
    return message | changes


def resolution(alert: dict, **changes) -> dict:
    return alert | {"status": "resolved", "resolved_at": iso(dt.datetime.now(UTC))} | changes


# -- the message format ----------------------------------------------------------------------------

def test_messages_without_status_are_firing_and_extra_fields_are_ignored():
    old = firing("HS-1")
    del old["status"]
    message = decode_alert(json.dumps(old | {"something_new": [1, 2]}).encode())
    assert message.status == "firing" and message.detected_at.tzinfo is not None
    assert decode_alert(json.dumps(resolution(firing("HS-1"))).encode()).resolved_at is not None


@pytest.mark.parametrize("value, reason", [
    (b"not json", "malformed"),
    (json.dumps(firing("HS-1", status="closed")).encode(), "status"),
    (json.dumps({k: v for k, v in firing("HS-1").items() if k != "item_ref"}).encode(), "item_ref"),
    (json.dumps(firing("HS-1", detected_at=None)).encode(), "detected_at"),
    (json.dumps(firing("HS-1", detected_at="2026-11-22T08:00:00")).encode(), "timezone"),
    (json.dumps(resolution(firing("HS-1"), resolved_at=None)).encode(), "resolved_at"),
])
def test_bad_messages_are_refused_with_a_reason(value, reason):
    with pytest.raises(BadAlertMessage, match=reason):
        decode_alert(value)


# -- one partition's fold --------------------------------------------------------------------------

def fold(book: PartitionBook, *messages, record_ms: int | None = None) -> None:
    for message in messages:
        book.apply(decode_alert(json.dumps(message).encode()), record_ms or int(time.time() * 1000))


def test_a_resolution_is_final_and_repeats_change_nothing():
    a, b = firing("HS-a"), firing("HS-b")
    book = PartitionBook(0, recent_ms=0)
    book.caught_up()
    fold(book, a, a, b)
    assert list(book.active) == [a["alert_id"], b["alert_id"]] and list(book.pending) == list(book.active)
    book.pending.clear()
    book.active[a["alert_id"]].announced = Alert.TAKEN
    fold(book, resolution(a), a, resolution(a))  # a repeat of the firing message after the resolution
    assert list(book.active) == [b["alert_id"]]
    assert list(book.resolving) == [a["alert_id"]] and list(book.pending) == [a["alert_id"]]
    book.close(a["alert_id"])
    fold(book, a, resolution(a))
    assert not book.resolving and list(book.active) == [b["alert_id"]]


def test_a_resolution_of_an_alert_never_offered_is_not_posted():
    a = firing("HS-a")
    book = PartitionBook(0, recent_ms=0)
    book.caught_up()
    fold(book, a, resolution(a))  # both while Alertmanager was down, say
    assert not book.active and not book.resolving and not book.pending


def test_rebuilding_posts_nothing_until_caught_up_and_checks_recent_resolutions():
    now_ms = int(time.time() * 1000)
    old, recent, still = firing("HS-old"), firing("HS-recent"), firing("HS-still")
    book = PartitionBook(0, recent_ms=now_ms - 60_000)
    fold(book, old, record_ms=now_ms - 3_600_000)
    fold(book, resolution(old), record_ms=now_ms - 3_500_000)
    fold(book, recent, still, resolution(recent), record_ms=now_ms - 1000)
    assert not book.pending
    assert list(book.unverified) == [recent["alert_id"]] and list(book.active) == [still["alert_id"]]
    assert old["alert_id"] in book.closed and recent["alert_id"] not in book.closed
    book.caught_up()
    assert list(book.pending) == [still["alert_id"]]
    assert book.active[still["alert_id"]].announced == Alert.OFFERED  # the previous owner may have posted it


# -- the alert Alertmanager gets -------------------------------------------------------------------

def _alert(message: dict) -> Alert:
    return Alert(decode_alert(json.dumps(message).encode()), 0, Alert.NEVER)


def test_labels_identify_the_alert_and_annotations_are_for_people():
    settings = Settings(severity_feedback_overdue="critical", business_runbook_url="https://git.example/runbook.md",
                        alert_dashboard_url="https://grafana.example/d/overdue?var-province={province}&var-agency={agency}")
    now = dt.datetime.now(UTC)
    dossier = firing("HS-1", agency="STP", due_at="2026-11-22T01:00:00Z")
    body = alert_body(settings, NAMES, _alert(dossier), True, now)
    assert body["labels"] == {"alertname": "DossierOverdue", "province": "01", "agency": "STP",
                              "procedure_code": "1.004227", "item_ref": dossier["item_ref"], "severity": "warning",
                              "replayed": "false"}
    assert body["annotations"]["summary"] == "Hồ sơ quá hạn xử lý: Sở Tư pháp (STP), Hà Nội, thủ tục 1.004227, hạn 22/11/2026 08:00"
    assert body["annotations"]["summary_en"] == ("Dossier overdue: Sở Tư pháp (STP), Hà Nội, procedure 1.004227,"
                                                 " due 2026-11-22 08:00 UTC+7")
    assert body["annotations"]["due_at"] == "2026-11-22T01:00:00.000Z"
    assert body["annotations"]["runbook_url"] == "https://git.example/runbook.md#dossieroverdue"
    assert body["generatorURL"] == body["annotations"]["dashboard_url"] == \
        "https://grafana.example/d/overdue?var-province=01&var-agency=STP"
    assert body["startsAt"] == dossier["detected_at"]
    assert body["endsAt"] == iso(now + dt.timedelta(seconds=settings.forwarder_ends_after_s))

    feedback = firing("FB-1", kind="feedback.overdue", agency="TTPVHCC", province="48", procedure=None)
    body = alert_body(settings, NAMES, _alert(feedback), True, now)
    assert "procedure_code" not in body["labels"] and body["labels"]["severity"] == "critical"
    assert body["labels"]["alertname"] == "FeedbackOverdue"
    assert body["annotations"]["summary"].startswith("Phản ánh, kiến nghị quá hạn xử lý: Trung tâm Phục vụ hành chính công")
    assert set(ALERT_KINDS) == {"dossier.overdue", "feedback.overdue"}


def test_a_resolution_never_ends_before_it_starts_nor_after_now():
    now = dt.datetime.now(UTC)
    message = firing("HS-1", ago_s=30)
    alert = _alert(message)
    alert.resolved_at = now - dt.timedelta(seconds=90)  # a completion dated before the watermark passed due
    body = alert_body(Settings(), NAMES, alert, False, now)
    assert body["endsAt"] == body["startsAt"] == message["detected_at"]
    alert.resolved_at = now + dt.timedelta(seconds=300)  # a clock ahead
    assert alert_body(Settings(), NAMES, alert, False, now)["endsAt"] == iso(now)
    ahead = _alert(firing("HS-2", ago_s=-120))
    assert alert_body(Settings(), NAMES, ahead, True, now)["startsAt"] == iso(now)


# -- the dispatcher, with a stand-in for Alertmanager ----------------------------------------------

class StandIn:
    """Takes posts or fails them, as told; remembers the last state of each alert (by item_ref)."""

    def __init__(self):
        self.up = True
        self.requests = 0
        self.state: dict[str, str] = {}

    def post_alerts(self, alerts):
        self.requests += 1
        if not self.up:
            raise AlertmanagerUnavailable("connection refused")
        for alert in alerts:
            resolved = alert["endsAt"] <= iso(dt.datetime.now(UTC))
            self.state[alert["labels"]["item_ref"]] = "resolved" if resolved else "firing"

    def firing(self, refs):
        return {(name, ref) for ref, state in self.state.items() if state == "firing" and ref in refs
                for name in ("DossierOverdue", "FeedbackOverdue")}

    def started_ms(self):
        return 0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_nothing_is_dropped_while_alertmanager_is_down_and_the_current_state_follows():
    clock, client = Clock(), StandIn()
    book = PartitionBook(0, recent_ms=0)
    book.caught_up()
    dispatcher = Dispatcher(Settings(forwarder_resend_s=60), NAMES, client, {0: book}, clock=clock)
    a, b, c = firing("HS-a"), firing("HS-b"), firing("HS-c")
    fold(book, a, b)
    assert dispatcher.step() and client.state == {a["item_ref"]: "firing", b["item_ref"]: "firing"}

    client.up = False
    fold(book, resolution(a), c, resolution(c))  # c fires and ends while nobody could be told
    waits = []
    for _ in range(7):
        assert not dispatcher.step()
        waits.append(round(dispatcher.retry_at - clock.now, 2))
        clock.now = dispatcher.retry_at
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert list(book.pending) == [a["alert_id"]] and dispatcher.wait_s() == 0.0

    client.up = True
    while dispatcher.step():
        pass
    assert client.state == {a["item_ref"]: "resolved", b["item_ref"]: "firing"}
    assert not book.pending and not book.resolving and list(book.active) == [b["alert_id"]]


def test_active_alerts_are_resent_and_rebuilt_resolutions_posted_only_if_still_held():
    clock, client = Clock(), StandIn()
    held, gone, both = firing("HS-held"), firing("HS-gone"), firing("HS-both")
    client.state = {held["item_ref"]: "firing", both["item_ref"]: "firing"}
    book = PartitionBook(0, recent_ms=0)
    dispatcher = Dispatcher(Settings(forwarder_resend_s=60), NAMES, client, {0: book}, clock=clock)
    fold(book, held, gone, both, resolution(held), resolution(gone))
    assert not dispatcher.step()  # rebuilding: nothing goes out
    book.caught_up()
    while dispatcher.step():
        pass
    assert client.state == {held["item_ref"]: "resolved", both["item_ref"]: "firing"}
    assert client.requests == 1  # `both` firing and `held` resolved; `gone` was never asked for

    clock.now += 61
    assert dispatcher.step() and client.requests == 2 and not book.pending


# -- memory ----------------------------------------------------------------------------------------

def test_memory_for_100000_active_alerts_and_what_a_resolution_leaves():
    records, ends = [], []
    for n in range(100_000):
        message = firing(f"HS-{n:06d}", agency=("STP", "SXD", "UBND-XA", "CAT")[n % 4], province="01")
        records.append(json.dumps(message).encode())
        ends.append(json.dumps(resolution(message)).encode())
    from sinks.alertmanager import Forwarder

    forwarder = Forwarder(Settings(), client=None, names=NAMES)

    class Record:
        __slots__ = ("offset", "timestamp", "value")

        def __init__(self, value, offset):
            self.value, self.offset, self.timestamp = value, offset, int(time.time() * 1000)

    batch = [Record(value, n) for n, value in enumerate(records)]
    closing = [Record(value, 100_000 + n) for n, value in enumerate(ends)]
    del records, ends
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    forwarder.books[0] = book = PartitionBook(0, recent_ms=0)
    started = time.perf_counter()
    forwarder.take(0, batch)
    seconds = time.perf_counter() - started
    book.caught_up()
    held = tracemalloc.get_traced_memory()[0] - before
    for alert in book.active.values():
        alert.announced = Alert.TAKEN
    forwarder.take(0, closing)
    for key in list(book.resolving):
        book.close(key)
    book.pending.clear()
    book.active, book.resolving, book.pending = {}, {}, {}  # emptied dicts keep their size until refilled
    left = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert not book.active and len(book.closed) == 100_000
    assert all(json.loads(record.value)["alert_id"] in book.closed for record in closing[::997])
    print(f"100,000 active alerts: {held / 2**20:.1f} MiB ({held / 100_000:.0f} bytes an alert, pending set"
          f" included), folded in {seconds:.2f} s; resolved: {left / 2**20:.1f} MiB ({len(book.closed.sealed):,}"
          f" sealed at 8 bytes, {len(book.closed.recent):,} in a set)")
    assert held / 100_000 < 700
    assert left < 8 * len(book.closed.sealed) + 100 * ClosedIds.SEAL_AT


# -- one-line errors -------------------------------------------------------------------------------

def opscentre(*args, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPSCENTRE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "opscentre.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, check=False)


KAFKA_SET = {"OPSCENTRE_KAFKA": "127.0.0.1:1"}


@pytest.mark.parametrize("args, env, message", [
    ([], KAFKA_SET, "OPSCENTRE_ALERTMANAGER is not set"),
    (["--alertmanager", "alertmanager:9093"], KAFKA_SET, "expected http[s]://host:port[/path], got 'alertmanager:9093'"),
    (["--alertmanager", "http://am:port"], KAFKA_SET, "expected http[s]://host:port"),
    ([], {**KAFKA_SET, "OPSCENTRE_ALERTMANAGER": "ftp://am:9093"}, "got 'ftp://am:9093'"),
    (["--alertmanager", "http://am:9093"], {}, "OPSCENTRE_KAFKA is not set"),
    (["--alertmanager", "http://am:9093"], {**KAFKA_SET, "OPSCENTRE_SEVERITY_DOSSIER_OVERDUE": "high"},
     "OPSCENTRE_SEVERITY_DOSSIER_OVERDUE: one of critical, warning, ticket, got 'high'"),
    (["--alertmanager", "http://am:9093"], {**KAFKA_SET, "OPSCENTRE_FORWARDER_ENDS_AFTER_S": "90"},
     "OPSCENTRE_FORWARDER_ENDS_AFTER_S (90) must be at least twice OPSCENTRE_FORWARDER_RESEND_S (60)"),
    (["--alertmanager", "http://am:9093"], {**KAFKA_SET, "OPSCENTRE_ALERTMANAGER_TIMEOUT_S": "8"},
     "must be at most half OPSCENTRE_GROUP_REBALANCE_TIMEOUT_S (10)"),
    (["--alertmanager", "http://am:9093"], {**KAFKA_SET, "OPSCENTRE_ALERT_DASHBOARD_URL": "grafana/d/x"},
     "OPSCENTRE_ALERT_DASHBOARD_URL: expected an http[s]:// address, got 'grafana/d/x'"),
    (["--alertmanager", "http://am:9093"], {"OPSCENTRE_KAFKA": f"127.0.0.1:{free_port()}"}, "is not reachable"),
])
def test_bad_settings_are_one_line_with_status_2(args, env, message):
    result = opscentre("alerts", "forward", *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_help():
    result = opscentre("alerts", "forward", "--help")
    assert result.returncode == 0 and "--alertmanager URL" in result.stdout


# -- real servers ----------------------------------------------------------------------------------

class Alerting:
    """Alertmanager on the generated routing, its business webhook recorded."""

    def __init__(self, tmp_path: Path):
        self.recorder = Recorder()
        teams = tmp_path / "teams.yml"
        teams.write_text("teams:\n"
                         f"- {{name: platform, webhook_url: '{self.recorder.url}/platform'}}\n"
                         f"- {{name: duty, business: true, webhook_url: '{self.recorder.url}/duty'}}\n")
        out = tmp_path / "generated"
        alertmanager.write(out, Config.from_settings(Settings(
            teams_file=str(teams), alert_group_wait_s=0.5, alert_group_interval_s=1.0)))
        self.start_script, self.work_dir = out / alertmanager.START_FILE, tmp_path
        self.server = start_alertmanager(self.start_script, tmp_path)
        self.url = self.server.url

    def restart(self) -> None:
        """On the same port, with the same storage (silences, notification log)."""
        port = int(self.url.rsplit(":", 1)[1])
        self.server = start_alertmanager(self.start_script, self.work_dir, port=port)

    def notifications(self) -> list[dict]:
        return [json.loads(r["body"]) for r in list(self.recorder.requests) if r["path"] == "/duty"]

    def pages(self) -> dict[str, list[str]]:
        """item_ref -> the status it had in each notification it was in, in order."""
        seen: dict[str, list[str]] = {}
        for notification in self.notifications():
            for alert in notification["alerts"]:
                seen.setdefault(alert["labels"]["item_ref"], []).append(alert["status"])
        return seen

    def held(self) -> set[str]:
        """item_refs of the unresolved alerts Alertmanager holds."""
        return {a["labels"]["item_ref"] for a in self.server.get("/api/v2/alerts")}

    def stop(self) -> None:
        self.server.stop()
        self.recorder.stop()


@pytest.fixture
def alerting(tmp_path):
    if not os.path.exists(ALERTMANAGER_BINARY):
        pytest.skip("prometheus-alertmanager not installed")
    servers = Alerting(tmp_path)
    try:
        yield servers
    finally:
        servers.stop()


class AlertsTopic:
    def __init__(self, bootstrap: str):
        self.settings = Settings(kafka=bootstrap, topic_prefix=unique_name("fw"), partitions=4)
        ensure_topics(self.settings)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all")

    def send(self, *messages: dict, partition: int | None = None, raw: bytes | None = None) -> None:
        for message in messages:
            where = partition if partition is not None else int(message["item_ref"], 16) % 4
            self.producer.send(self.settings.alerts_topic, key=message["alert_id"].encode(),
                               value=json.dumps(message).encode(), partition=where)
        if raw is not None:
            self.producer.send(self.settings.alerts_topic, key=b"x", value=raw, partition=partition or 0)
        self.producer.flush()


@pytest.fixture
def topic(kafka_bootstrap):
    alerts = AlertsTopic(kafka_bootstrap)
    try:
        yield alerts
    finally:
        alerts.producer.close()


class ForwarderProcess:
    """`opscentre alerts forward` as a child process, with short group and re-send timings."""

    def __init__(self, topic: AlertsTopic, alerting: Alerting, log_path: Path, **env):
        self.metrics_port = free_port()
        self.log_path = log_path
        self.env = dict(
            os.environ, OPSCENTRE_KAFKA=topic.settings.kafka, OPSCENTRE_TOPIC_PREFIX=topic.settings.topic_prefix,
            OPSCENTRE_ALERTMANAGER=alerting.url, OPSCENTRE_FORWARDER_GROUP=topic.settings.topic_prefix + "-forwarder",
            OPSCENTRE_METRICS_ADDR=f"127.0.0.1:{self.metrics_port}", OPSCENTRE_GROUP_SESSION_TIMEOUT_S="6",
            OPSCENTRE_GROUP_REBALANCE_TIMEOUT_S="5", OPSCENTRE_GROUP_HEARTBEAT_S="1",
            OPSCENTRE_FORWARDER_RESEND_S="2", OPSCENTRE_FORWARDER_ENDS_AFTER_S="60",
            OPSCENTRE_ALERTMANAGER_TIMEOUT_S="1", **env)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "opscentre.cli", "-v", "alerts", "forward"],
                                            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def metrics(self) -> dict[str, float]:
        """{name or name{k=v,...}: value}; nothing while it is not serving."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return values

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]


@pytest.fixture
def forwarders(tmp_path):
    started: list[ForwarderProcess] = []

    def start(topic, alerting, **env) -> ForwarderProcess:
        forwarder = ForwarderProcess(topic, alerting, tmp_path / f"forwarder{len(started)}.log", **env)
        started.append(forwarder)
        return forwarder

    try:
        yield start
    finally:
        for forwarder in started:
            forwarder.stop(signal.SIGKILL)


def wait_for(predicate, timeout_s: float, what: str, forwarders=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    logs = "\n".join(f.log() for f in forwarders)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def ref(message: dict) -> str:
    return message["item_ref"]


@pytest.mark.integration
@needs_alertmanager
def test_each_alert_pages_once_and_its_resolution_once_and_replays_never(topic, alerting, forwarders):
    history = firing("HS-history")  # fired and resolved before the forwarder started: nothing to say
    live = [firing(f"HS-{n}") for n in range(6)]
    old_format = {k: v for k, v in firing("HS-old").items() if k != "status"}
    feedback = firing("FB-1", kind="feedback.overdue", procedure=None)
    replay = firing("HS-replayed", replayed=True)
    topic.send(history, resolution(history), *live, live[3], old_format, feedback, replay,
               resolution(replay, replayed=True), live[1] | {"replayed": True, "agency": "elsewhere"},
               firing("SEC-1", kind="security.brute_force"))
    topic.send(raw=b"not an alert", partition=2)
    forwarder = forwarders(topic, alerting)
    paged = live + [old_format, feedback]
    wait_for(lambda: set(alerting.pages()) >= {ref(a) for a in paged}, 30, "the first pages", [forwarder])

    # The alert as Alertmanager holds it: the routing's labels, the message's times.
    held = {a["labels"]["item_ref"]: a for a in alerting.server.get("/api/v2/alerts")}
    assert set(held) == {ref(a) for a in paged}
    first = held[ref(live[0])]
    assert first["labels"] == {"alertname": "DossierOverdue", "province": "01", "agency": live[0]["agency"],
                               "procedure_code": "1.004227", "item_ref": ref(live[0]), "severity": "warning",
                               "replayed": "false"}
    assert [r["name"] for r in first["receivers"]] == ["duty-warning"]
    assert first["startsAt"] == live[0]["detected_at"]
    assert set(first["annotations"]) == {"summary", "summary_en", "due_at", "detected_at"}
    assert held[ref(feedback)]["labels"]["alertname"] == "FeedbackOverdue"

    # Resolutions (one twice), a repeat of a resolved alert's firing message, a new alert and its end.
    late = firing("HS-late")
    topic.send(resolution(live[0]), resolution(live[1]), resolution(live[1]), live[0], resolution(feedback), late)
    wait_for(lambda: alerting.pages().get(ref(late)) == ["firing"], 20, "the late alert", [forwarder])
    topic.send(resolution(late))
    ended = [live[0], live[1], feedback, late]
    wait_for(lambda: all(alerting.pages().get(ref(a)) == ["firing", "resolved"] for a in ended), 20,
             "the resolutions", [forwarder])
    time.sleep(5)  # two re-sends and more group intervals: nothing more may come

    still = [live[2], live[3], live[4], live[5], old_format]
    assert alerting.pages() == {**{ref(a): ["firing"] for a in still}, **{ref(a): ["firing", "resolved"] for a in ended}}
    assert alerting.held() == {ref(a) for a in still}
    assert all(n["alerts"][0]["labels"]["replayed"] == "false" for n in alerting.notifications())
    metrics = forwarder.metrics()
    assert metrics["opscentre_forwarder_alerts_posted_total{type=dossier.overdue}"] == 8
    assert metrics["opscentre_forwarder_alerts_posted_total{type=feedback.overdue}"] == 1
    assert metrics["opscentre_forwarder_alerts_resolved_total{type=dossier.overdue}"] == 3
    assert metrics["opscentre_forwarder_alerts_resolved_total{type=feedback.overdue}"] == 1
    assert metrics["opscentre_forwarder_active_alerts"] == 5
    assert metrics["opscentre_forwarder_pending_alerts"] == 0
    assert metrics["opscentre_forwarder_post_failures_total"] == 0
    assert metrics["opscentre_forwarder_messages_skipped_total{reason=replayed}"] == 3
    assert metrics["opscentre_forwarder_messages_skipped_total{reason=invalid}"] == 1
    assert metrics["opscentre_forwarder_messages_skipped_total{reason=unknown_type}"] == 1
    assert forwarder.stop() == 0


def check_paged_once(pages: dict[str, list[str]], alerts: list[dict], resolved: set[str]) -> int:
    """Each alert paged at most once, its resolution at most once and only after; an alert still
    firing was paged, one resolved after its page had its resolution paged. Returns how many paged."""
    for alert in alerts:
        seen = pages.get(ref(alert), [])
        if ref(alert) in resolved:
            assert seen in ([], ["firing", "resolved"]), (alert["agency"], seen)
        else:
            assert seen == ["firing"], (alert["agency"], seen)
    return sum(1 for alert in alerts if pages.get(ref(alert)))


@pytest.mark.integration
@needs_alertmanager
def test_sigkill_mid_stream_and_restart(topic, alerting, forwarders):
    # Two alerts in one Alertmanager group: the first resolved before the kill must not be
    # announced again when the group notifies later.
    shared = [firing(f"HS-shared-{n}", agency="SHARED") for n in range(3)]
    forwarder = forwarders(topic, alerting)
    topic.send(shared[0], shared[1])
    wait_for(lambda: {ref(shared[0]), ref(shared[1])} <= set(alerting.pages()), 30, "the shared group", [forwarder])
    topic.send(resolution(shared[0]))
    wait_for(lambda: "resolved" in alerting.pages().get(ref(shared[0]), []), 20, "its resolution", [forwarder])

    stream = [firing(f"HS-stream-{n}") for n in range(40)]
    resolved: set[str] = set()
    restarted: list[ForwarderProcess] = []

    def produce():
        for n, alert in enumerate(stream):
            topic.send(alert)
            if n >= 6 and n % 2 == 0:  # every other alert ends about 1.2 s after it fired
                topic.send(resolution(stream[n - 6]))
                resolved.add(ref(stream[n - 6]))
            if n == 12:
                forwarder.stop(signal.SIGKILL)
            if n == 16:
                restarted.append(forwarders(topic, alerting))
            time.sleep(0.2)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    again = restarted[0]
    wait_for(lambda: again.metric("opscentre_forwarder_partitions_owned") == 4
             and again.metric("opscentre_forwarder_pending_alerts") == 0, 40, "the restarted forwarder", [again])
    topic.send(shared[2])
    firing_at_end = [a for a in stream if ref(a) not in resolved]
    wait_for(lambda: all(alerting.pages().get(ref(a)) for a in firing_at_end + [shared[2]]), 30, "every page", [again])
    time.sleep(5)

    pages = alerting.pages()
    paged = check_paged_once(pages, stream, resolved)
    assert paged >= len(firing_at_end)
    assert alerting.held() == {ref(a) for a in firing_at_end} | {ref(shared[1]), ref(shared[2])}
    # The shared group: the first alert's resolution was announced once, and not again with the third.
    assert pages[ref(shared[0])][-1] == "resolved" and pages[ref(shared[0])].count("resolved") == 1
    group = [n for n in alerting.notifications() if n["groupLabels"].get("agency") == "SHARED"]
    assert {(a["labels"]["item_ref"], a["status"]) for a in group[-1]["alerts"]} == {
        (ref(shared[1]), "firing"), (ref(shared[2]), "firing")}, group[-1]
    print(f"{paged} of {len(stream)} streamed alerts paged ({len(resolved)} resolved, some within the downtime)")


@pytest.mark.integration
@needs_alertmanager
def test_two_forwarders_share_partitions_and_one_leaves(topic, alerting, forwarders):
    first = forwarders(topic, alerting)
    wait_for(lambda: first.metric("opscentre_forwarder_partitions_owned") == 4, 30, "the first forwarder", [first])
    second = forwarders(topic, alerting)
    wait_for(lambda: first.metric("opscentre_forwarder_partitions_owned") == 2
             and second.metric("opscentre_forwarder_partitions_owned") == 2, 40, "a split", [first, second])
    wait_for(lambda: first.metric("opscentre_forwarder_pending_alerts") == 0
             and second.metric("opscentre_forwarder_pending_alerts") == 0, 20, "rebuilt", [first, second])

    alerts = [firing(f"HS-pair-{n}") for n in range(16)]
    topic.send(*alerts)
    wait_for(lambda: set(alerting.pages()) >= {ref(a) for a in alerts}, 30, "16 pages", [first, second])
    posted = [f.metric("opscentre_forwarder_alerts_posted_total{type=dossier.overdue}") for f in (first, second)]
    assert sum(posted) == 16 and min(posted) > 0, posted  # each alert by its partition's owner, once

    # The second leaves; resolutions and new alerts come while the group rebalances.
    leaving = threading.Thread(target=second.stop)
    leaving.start()
    ended = alerts[::2]
    newer = [firing(f"HS-pair-new-{n}") for n in range(4)]
    topic.send(*(resolution(a) for a in ended), *newer)
    leaving.join()
    assert second.process.returncode == 0, second.log()
    wait_for(lambda: first.metric("opscentre_forwarder_partitions_owned") == 4, 30, "the take-over", [first])
    resolved = {ref(a) for a in ended}
    wait_for(lambda: all(alerting.pages().get(ref(a)) == ["firing", "resolved"] for a in ended)
             and all(alerting.pages().get(ref(a)) for a in newer), 30, "resolutions and new pages", [first])
    time.sleep(4)
    check_paged_once(alerting.pages(), alerts + newer, resolved)
    assert alerting.held() == {ref(a) for a in alerts[1::2] + newer}


@pytest.mark.integration
@needs_alertmanager
def test_alertmanager_down_for_a_minute(topic, alerting, forwarders):
    before = [firing(f"HS-before-{n}") for n in range(6)]
    forwarder = forwarders(topic, alerting)
    topic.send(*before)
    wait_for(lambda: set(alerting.pages()) >= {ref(a) for a in before}, 30, "the first pages", [forwarder])
    time.sleep(2)  # a notification log entry for each

    alerting.server.stop()
    stopped = time.monotonic()
    during = [firing(f"HS-during-{n}") for n in range(3)]
    brief = firing("HS-brief")  # fires and ends while nobody can be told
    topic.send(resolution(before[0]), resolution(before[1]), resolution(before[1]), *during, before[2], brief)
    time.sleep(5)
    topic.send(resolution(brief))
    wait_for(lambda: forwarder.metric("opscentre_forwarder_post_failures_total") >= 3, 30, "failed posts", [forwarder])
    assert forwarder.metric("opscentre_forwarder_pending_alerts") >= 2 + len(during)
    time.sleep(max(0.0, 60 - (time.monotonic() - stopped)))
    failures = forwarder.metric("opscentre_forwarder_post_failures_total")

    alerting.restart()
    wait_for(lambda: all(alerting.pages().get(ref(a)) == ["firing", "resolved"] for a in before[:2])
             and all(alerting.pages().get(ref(a)) for a in during), 30, "the state after the outage", [forwarder])
    time.sleep(5)
    pages = alerting.pages()
    assert pages == {**{ref(a): ["firing", "resolved"] for a in before[:2]}, **{ref(a): ["firing"] for a in before[2:]},
                     **{ref(a): ["firing"] for a in during}}, pages
    assert alerting.held() == {ref(a) for a in before[2:] + during}
    print(f"{failures:.0f} failed requests in 60 s (backoff up to 10 s); after the restart, every alert's state once")


# -- with the real worker --------------------------------------------------------------------------

@pytest.mark.integration
@needs_alertmanager
def test_the_worker_s_overdue_alerts_reach_the_webhook(pipeline, alerting, forwarders):
    from opscentre.events import routing_key
    from opscentre.kafka import partition_for
    from tests.test_live_alerts import event, received
    from tests.test_live_alerts import iso as iso_ms

    pipeline.env["OPSCENTRE_IDLE_WATERMARK_S"] = "1"
    settings = pipeline.settings
    ensure_topics(settings)
    pipeline.start_worker()

    class PipelineTopic:  # the worker's alerts topic, for ForwarderProcess
        pass

    view = PipelineTopic()
    view.settings = settings
    forwarder = forwarders(view, alerting, OPSCENTRE_PSEUDONYM_KEY="unused by the forwarder")
    now = int(time.time() * 1000)
    due = now + 8_000
    overdue = [received(f"HS-live-{n}", now, due) for n in range(3)]
    done = received("HS-live-done", now, due)
    completion = event("c-done", "dossier.completed", now + 1_000, dossier_id="HS-live-done",
                       procedure_code="2.000815", due_at=iso_ms(due), result="approved")
    producer = KafkaProducer(bootstrap_servers=settings.kafka.split(","), acks="all")
    for e in (*overdue, done, completion):
        producer.send(settings.service_topic, key=routing_key(e).encode(), value=json.dumps(e).encode(),
                      partition=partition_for(routing_key(e), settings.partitions))
    producer.flush()
    producer.close()

    def paged():
        return {a["labels"]["item_ref"]: a for n in alerting.notifications() for a in n["alerts"]}

    wait_for(lambda: len(paged()) >= 3, 90, "three overdue pages from the worker", [forwarder])
    time.sleep(3)  # a page for the completed dossier would come now
    alerts = paged()
    assert len(alerts) == 3
    for alert in alerts.values():
        assert alert["status"] == "firing"
        assert {k: v for k, v in alert["labels"].items() if k != "item_ref"} == {
            "alertname": "DossierOverdue", "province": "48", "agency": "UBND-XA", "procedure_code": "2.000815",
            "severity": "warning", "replayed": "false"}
        assert len(alert["labels"]["item_ref"]) == 64 and "HS-live" not in json.dumps(alert)
        assert alert["annotations"]["summary"].startswith("Hồ sơ quá hạn xử lý: Ủy ban nhân dân cấp xã (UBND-XA), Đà Nẵng")
        assert due <= dt.datetime.fromisoformat(alert["startsAt"]).timestamp() * 1000 <= due + 60_000
