"""`opscentre alerts forward`: business alerts from `<prefix>.alerts` to Alertmanager's API v2.

Alertmanager keeps one alert per label set and decides who is paged; this sink tells it each
alert's latest state and never an older one. Order is the danger: a firing alert posted after its
resolution opens it again and pages again. (Alertmanager 0.25, `provider/mem/mem.go` `Put`: a
post is merged into the stored alert only when their activity ranges overlap; a firing post after
an explicit resolution does not overlap it and replaces it.) So:

- Each partition of the topic is folded into alert_id -> latest state (`PartitionBook`). A
  resolution is final: a repeat of the firing message read after it is old news.
- On every assignment (start, rebalance) the partition is read from its beginning, and none of it
  is posted until the consumer has passed the high watermark of the first fetch after the
  assignment: everything a previous owner could have posted is known by then. (Tansu's ListOffsets
  under-reports the end; its fetch responses carry the true high watermark.)
- Firing alerts are posted with `startsAt` = `detected_at` and `endsAt` = now +
  OPSCENTRE_FORWARDER_ENDS_AFTER_S, and re-sent every OPSCENTRE_FORWARDER_RESEND_S: Alertmanager
  ends an alert by itself only if no forwarder has re-sent it for that long (all of them gone),
  whatever its resolve_timeout. A resolution is posted with `endsAt` = its `resolved_at`, until
  Alertmanager has taken it.
- A resolution read while rebuilding may or may not have been posted by the previous owner. It is
  posted if Alertmanager still holds the alert firing, or started since it could have lost it:
  posting it again otherwise would, in a group with other firing alerts, announce it twice
  (`notify/notify.go` `DedupStage.needsUpdate`: a resolved alert not in the last notification).
- One thread takes turns: Kafka polls (and the rebalance callbacks in them), then at most one
  request to Alertmanager. A revoked partition's alerts are never posted after the revocation,
  and a request carries the states at the time it is sent. A request is bounded by
  OPSCENTRE_ALERTMANAGER_TIMEOUT_S, under half the group's rebalance timeout, so the consumer
  polls in time and keeps its partitions.
- Alertmanager not answering: nothing is dropped; retries back off from 0.5 s to 10 s; when it
  answers, every alert's current state is posted (not the history). Alertmanager keeps its
  notification log in --storage.path: a restarted one re-sent the same firing alerts pages no one.
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from opscentre.alerts import FIRING, AlertMessage, BadAlertMessage, decode_alert
from opscentre.catalogue import load_catalogue
from opscentre.kafka import ensure_topics
from opscentre.provinces import load_provinces
from opscentre.settings import Settings, SettingsError
from opscentre.telemetry import serve_metrics

log = logging.getLogger(__name__)

POSTED = Counter("opscentre_forwarder_alerts_posted_total",
                 "Alerts Alertmanager took as firing (once per alert and owner of its partition, re-sends not counted)",
                 ["type"])
RESOLVED = Counter("opscentre_forwarder_alerts_resolved_total", "Resolutions Alertmanager took", ["type"])
POST_FAILURES = Counter("opscentre_forwarder_post_failures_total",
                        "Requests to Alertmanager that failed: refused, timed out, or answered with an error")
ACTIVE = Gauge("opscentre_forwarder_active_alerts", "Firing alerts of the partitions this forwarder owns")
PENDING = Gauge("opscentre_forwarder_pending_alerts", "Alerts whose latest state Alertmanager has not taken yet")
PARTITIONS = Gauge("opscentre_forwarder_partitions_owned", "Partitions of the alerts topic this forwarder owns")
SKIPPED = Counter("opscentre_forwarder_messages_skipped_total",
                  "Messages of the alerts topic not forwarded: replayed, invalid, unknown_type", ["reason"])

VN = datetime.timezone(datetime.timedelta(hours=7))
UTC = datetime.UTC
POST_BATCH = 500  # alerts per request
LOOKUP_BATCH = 100  # alerts per question to Alertmanager
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 10.0
PLAIN_REF = re.compile(r"[0-9A-Za-z_.:-]{1,256}")


@dataclass(frozen=True)
class AlertKind:
    alertname: str
    severity_setting: str  # the Settings field holding its `severity` label
    summary_vi: str  # {agency_name} {province_name} {procedure_vi} {procedure_en} {due_vi} {due_en}
    summary_en: str
    labels: tuple[tuple[str, str], ...] = ()  # fixed labels, e.g. ("team", "security") for security.*


# The message's `type` -> what Alertmanager sees. The routing (dashboards/alerts/alertmanager.py)
# sends an alert with a `province` label and no `team` to the business teams of its province and
# agency, grouped by alertname, province, agency and severity; `replayed="true"` goes nowhere.
ALERT_KINDS = {
    "dossier.overdue": AlertKind(
        "DossierOverdue", "severity_dossier_overdue",
        "Hồ sơ quá hạn xử lý: {agency_name}, {province_name}{procedure_vi}{due_vi}",
        "Dossier overdue: {agency_name}, {province_name}{procedure_en}{due_en}"),
    "feedback.overdue": AlertKind(
        "FeedbackOverdue", "severity_feedback_overdue",
        "Phản ánh, kiến nghị quá hạn xử lý: {agency_name}, {province_name}{due_vi}",
        "Citizen feedback overdue: {agency_name}, {province_name}{due_en}"),
}


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- settings --------------------------------------------------------------------------------------

def alertmanager_url(settings: Settings) -> str:
    url = settings.alertmanager
    if not url:
        raise SettingsError("OPSCENTRE_ALERTMANAGER is not set (Alertmanager's address, e.g. http://alertmanager:9093;"
                            " or --alertmanager)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SettingsError(f"OPSCENTRE_ALERTMANAGER (or --alertmanager): expected http[s]://host:port[/path], got {url!r}")
    return url.rstrip("/")


def check_settings(settings: Settings) -> None:
    link = settings.alert_dashboard_url
    if link and urllib.parse.urlsplit(link).scheme not in ("http", "https"):
        # Also the alerts' generatorURL: the link Alertmanager's receivers show.
        raise SettingsError(f"OPSCENTRE_ALERT_DASHBOARD_URL: expected an http[s]:// address, got {link!r}")
    if settings.forwarder_ends_after_s < 2 * settings.forwarder_resend_s:
        raise SettingsError(
            f"OPSCENTRE_FORWARDER_ENDS_AFTER_S ({settings.forwarder_ends_after_s:g}) must be at least twice"
            f" OPSCENTRE_FORWARDER_RESEND_S ({settings.forwarder_resend_s:g}): a late re-send would end alerts")
    if settings.alertmanager_timeout_s * 2 > settings.group_rebalance_timeout_s:
        raise SettingsError(
            f"OPSCENTRE_ALERTMANAGER_TIMEOUT_S ({settings.alertmanager_timeout_s:g}) must be at most half"
            f" OPSCENTRE_GROUP_REBALANCE_TIMEOUT_S ({settings.group_rebalance_timeout_s:g}): the consumer"
            " must poll within that time")


# -- what one partition says -----------------------------------------------------------------------

class ClosedIds:
    """The ids of resolved alerts, as 64-bit hashes: 8 bytes each once sealed into a sorted array.

    A new alert whose id shares a hash with a closed one would not be posted: odds of n / 2^64 with
    n closed, one in 18 trillion for a million.
    """

    SEAL_AT = 65_536

    def __init__(self):
        self.recent: set[int] = set()
        self.sealed = np.empty(0, dtype=np.int64)

    def add(self, key: str) -> None:
        self.recent.add(hash(key))
        if len(self.recent) >= self.SEAL_AT:
            self.sealed = np.union1d(self.sealed, np.fromiter(self.recent, np.int64, len(self.recent)))
            self.recent = set()

    def __contains__(self, key: str) -> bool:
        digest = hash(key)
        if digest in self.recent:
            return True
        at = int(np.searchsorted(self.sealed, digest))
        return at < len(self.sealed) and int(self.sealed[at]) == digest

    def __len__(self) -> int:
        return len(self.recent) + len(self.sealed)


class Alert:
    """An alert's latest state: its firing message (the labels posted), and once resolved, when."""

    __slots__ = ("announced", "ended_ms", "fired_ms", "message", "resolved_at")

    NEVER, OFFERED, TAKEN = 0, 1, 2  # `announced`: posted as firing never, maybe, certainly

    def __init__(self, message: AlertMessage, fired_ms: int, announced: int):
        self.message = message
        self.announced = announced
        self.resolved_at: datetime.datetime | None = None
        # Kafka timestamps of the firing message and of the resolution.
        self.fired_ms, self.ended_ms = fired_ms, 0


class PartitionBook:
    """alert_id -> latest state of one partition of the alerts topic, and what is left to post."""

    def __init__(self, partition: int, recent_ms: int):
        self.partition = partition
        self.recent_ms = recent_ms  # a resolution read while rebuilding, written after this, may be unposted
        self.active: dict[str, Alert] = {}  # firing
        self.resolving: dict[str, Alert] = {}  # resolved; Alertmanager is to be told
        self.unverified: dict[str, Alert] = {}  # resolved while rebuilding: told if Alertmanager still holds it
        self.closed = ClosedIds()  # resolved: a repeat of their firing message is old news
        self.pending: dict[str, None] = {}  # ids whose latest state is to be posted, oldest first
        self.rebuilding = True
        self.seen = False  # a record came since the assignment (so the high watermark is fresh)
        self.begin: int | None = None
        self.end: int | None = None
        self.target: int | None = None  # caught up at this offset
        self.assigned_at = time.monotonic()

    def apply(self, message: AlertMessage, record_ms: int) -> None:
        key = message.alert_id
        if message.status == FIRING:
            if key in self.active or key in self.resolving or key in self.unverified or key in self.closed:
                return  # a repeat, or older than the resolution
            self.active[key] = Alert(message, record_ms, Alert.OFFERED if self.rebuilding else Alert.NEVER)
            if not self.rebuilding:
                self.pending[key] = None
            return
        alert = self.active.pop(key, None)
        if alert is None:
            if key not in self.resolving and key not in self.unverified:
                self.closed.add(key)  # resolved without a firing message seen: nothing to tell
            return
        alert.resolved_at, alert.ended_ms = message.resolved_at, record_ms
        if self.rebuilding:
            if record_ms >= self.recent_ms:
                self.unverified[key] = alert
            else:
                self.closed.add(key)  # long over: Alertmanager has ended it one way or the other
        elif alert.announced != Alert.NEVER:
            self.resolving[key] = alert
            self.pending[key] = None
        else:
            self.pending.pop(key, None)  # never offered to Alertmanager: nobody was paged
            self.closed.add(key)

    def caught_up(self) -> None:
        self.rebuilding = False
        self.pending.update(dict.fromkeys(self.active))

    def close(self, key: str) -> None:
        del self.resolving[key]
        self.closed.add(key)


# -- Alertmanager ----------------------------------------------------------------------------------

class AlertmanagerUnavailable(Exception):
    """Alertmanager did not take a request: not reachable, timed out, or an error status."""


class AlertmanagerClient:
    """The three calls of Alertmanager's API v2 the forwarder makes."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s

    def _request(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                         headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise AlertmanagerUnavailable(f"{self.url}: {reason}") from None

    def _json(self, path: str):
        status, body = self._request(path)
        if status != 200:
            raise AlertmanagerUnavailable(f"{self.url}{path.split('?')[0]}: HTTP {status}: {_text(body)}")
        try:
            return json.loads(body)
        except ValueError:
            raise AlertmanagerUnavailable(f"{self.url}{path.split('?')[0]}: not JSON: {_text(body)}") from None

    def post_alerts(self, alerts: list[dict]) -> str | None:
        """None when all were taken; Alertmanager's reason when it took only the valid ones (400)."""
        status, body = self._request("/api/v2/alerts", json.dumps(alerts, ensure_ascii=False).encode())
        if status == 200:
            return None
        if status == 400:  # api/v2 postAlertsHandler stores the valid alerts, then answers 400
            return _text(body)
        raise AlertmanagerUnavailable(f"{self.url}/api/v2/alerts: HTTP {status}: {_text(body)}")

    def firing(self, item_refs) -> set[tuple[str, str]]:
        """(alertname, item_ref) of the alerts Alertmanager holds unresolved, among these items."""
        matcher = "item_ref=~\"" + "|".join(item_refs) + "\""
        alerts = self._json("/api/v2/alerts?" + urllib.parse.urlencode({"filter": matcher}))
        return {(a["labels"].get("alertname"), a["labels"].get("item_ref")) for a in alerts}

    def started_ms(self) -> int:
        uptime = self._json("/api/v2/status")["uptime"]  # the start time, despite its name
        return int(datetime.datetime.fromisoformat(uptime).timestamp() * 1000)


def _text(body: bytes) -> str:
    return " ".join(body.decode("utf-8", errors="replace").split())[:300]


class Names:
    """People's names for province and agency codes in the summaries."""

    def __init__(self, provinces: dict[str, str], catalogue):
        self.provinces = provinces
        self.catalogue = catalogue

    def province(self, code: str) -> str:
        return self.provinces.get(code, code)

    def agency(self, province: str, code: str) -> str:
        name = self.catalogue.agency_name(province, code) if self.catalogue is not None else None
        return f"{name} ({code})" if name else code


def alert_body(settings: Settings, names: Names, alert: Alert, firing: bool, now: datetime.datetime) -> dict:
    """The Alertmanager alert for this state: labels identify it, annotations are for people."""
    m = alert.message
    kind = ALERT_KINDS[m.type]
    labels = {"alertname": kind.alertname, "province": m.province, "agency": m.agency}
    if m.procedure_code:
        labels["procedure_code"] = m.procedure_code
    labels |= {"item_ref": m.item_ref, "severity": getattr(settings, kind.severity_setting), "replayed": "false"}
    labels |= dict(kind.labels)
    due = m.due_at.astimezone(VN) if m.due_at else None
    text = {
        "agency_name": names.agency(m.province, m.agency), "province_name": names.province(m.province),
        "procedure_vi": f", thủ tục {m.procedure_code}" if m.procedure_code else "",
        "procedure_en": f", procedure {m.procedure_code}" if m.procedure_code else "",
        "due_vi": f", hạn {due:%d/%m/%Y %H:%M}" if due else "",
        "due_en": f", due {due:%Y-%m-%d %H:%M} UTC+7" if due else "",
    }
    annotations = {"summary": kind.summary_vi.format(**text), "summary_en": kind.summary_en.format(**text),
                   "detected_at": rfc3339(m.detected_at)}
    if m.due_at:
        annotations["due_at"] = rfc3339(m.due_at)
    if settings.business_runbook_url:
        annotations["runbook_url"] = f"{settings.business_runbook_url}#{kind.alertname.lower()}"
    # An alert detected ahead of this clock starts now: Alertmanager refuses an end before the start.
    starts = min(m.detected_at, now)
    if firing:
        ends = now + datetime.timedelta(seconds=settings.forwarder_ends_after_s)
    else:
        ends = min(max(alert.resolved_at, starts), now)
        annotations["resolved_at"] = rfc3339(alert.resolved_at)
    body = {"labels": labels, "annotations": annotations, "startsAt": rfc3339(starts), "endsAt": rfc3339(ends)}
    if settings.alert_dashboard_url:
        link = settings.alert_dashboard_url
        for name in ("alertname", "province", "agency"):
            link = link.replace("{" + name + "}", urllib.parse.quote(labels[name], safe=""))
        annotations["dashboard_url"] = body["generatorURL"] = link
    return body


# -- posting ---------------------------------------------------------------------------------------

class Dispatcher:
    """Posts what the books hold to Alertmanager, one request per step, with backoff on failure."""

    def __init__(self, settings: Settings, names: Names, client: AlertmanagerClient, books: dict[int, PartitionBook],
                 clock=time.monotonic, wall=time.time):
        self.settings, self.names, self.client, self.books = settings, names, client, books
        self.clock, self.wall = clock, wall
        self.next_resend = clock() + settings.forwarder_resend_s
        self.retry_at = 0.0
        self.failures = 0
        self.failing_since: float | None = None

    def _ready(self):
        return [book for book in self.books.values() if not book.rebuilding]

    def has_work(self) -> bool:
        return any(book.pending or book.unverified for book in self._ready())

    def wait_s(self) -> float:
        """How long the consumer may wait for records before the next step has something to do."""
        now = self.clock()
        if now < self.retry_at:
            until = self.retry_at
        elif self.has_work():
            return 0.0
        else:
            until = self.next_resend
        return max(0.0, min(0.5, until - now))

    def resend_all(self) -> None:
        for book in self._ready():
            book.pending.update(dict.fromkeys(book.active))

    def step(self, resend: bool = True) -> bool:
        """At most one request to Alertmanager; True when one was taken."""
        now = self.clock()
        if resend and now >= self.next_resend:
            self.resend_all()
            self.next_resend = now + self.settings.forwarder_resend_s
        done = False
        if now >= self.retry_at:
            try:
                done = self._verify() or self._post()
            except AlertmanagerUnavailable as exc:
                self._failed(str(exc))
            else:
                if done:
                    self._succeeded()
        self.update_gauges()
        return done

    def drain(self, seconds: float) -> None:
        """Post what is pending (no re-sends), for at most `seconds`, stopping at the first failure."""
        deadline = self.clock() + seconds
        while self.has_work() and self.clock() < deadline and self.failures == 0:
            self.step(resend=False)

    def update_gauges(self) -> None:
        ACTIVE.set(sum(len(book.active) for book in self.books.values()))
        PENDING.set(sum(len(book.pending) + len(book.unverified) for book in self.books.values()))
        PARTITIONS.set(len(self.books))

    def _failed(self, reason: str) -> None:
        POST_FAILURES.inc()
        self.failures += 1
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self.failures - 1))
        self.retry_at = self.clock() + delay
        if self.failing_since is None:
            self.failing_since = self.clock()
            log.warning("Alertmanager did not take a request (%s); alerts are kept and retried", reason)
        else:
            log.info("Alertmanager still failing (%s); next try in %.1f s", reason, delay)

    def _succeeded(self) -> None:
        if self.failing_since is not None:
            log.warning("Alertmanager answers again after %.0f s and %d failed requests; posting every alert's"
                        " current state", self.clock() - self.failing_since, self.failures)
            self.failing_since = None
            self.resend_all()  # a restarted Alertmanager holds nothing until told again
        self.failures = 0
        self.retry_at = 0.0

    def _verify(self) -> bool:
        """Ask Alertmanager about resolutions read while rebuilding: post those it may still hold firing."""
        book = next((b for b in self._ready() if b.unverified), None)
        if book is None:
            return False
        batch = list(book.unverified.items())[:LOOKUP_BATCH]
        started_ms = self.client.started_ms()
        # Pseudonyms are hex digests; anything else is not put in a matcher, and counts as held.
        refs = {alert.message.item_ref for _, alert in batch}
        plain = {ref for ref in refs if PLAIN_REF.fullmatch(ref)}
        firing = self.client.firing(plain) if plain else set()
        resend_ms = self.settings.forwarder_resend_s * 1000
        for key, alert in batch:
            del book.unverified[key]
            name = ALERT_KINDS[alert.message.type].alertname
            ref = alert.message.item_ref
            # Started after the alert's last re-send before its resolution, Alertmanager may have lost
            # the alert and still remember (in its notification log) that it paged about it.
            lost = started_ms > max(alert.fired_ms, alert.ended_ms - 2 * resend_ms)
            if (name, ref) in firing or ref not in plain or lost:
                book.resolving[key] = alert
                book.pending[key] = None
            else:
                book.closed.add(key)
        return True

    def _post(self) -> bool:
        batch = []  # (book, key, alert, firing)
        for book in self._ready():
            while book.pending and len(batch) < POST_BATCH:
                key = next(iter(book.pending))
                del book.pending[key]
                if (alert := book.active.get(key)) is not None:
                    batch.append((book, key, alert, True))
                elif (alert := book.resolving.get(key)) is not None:
                    batch.append((book, key, alert, False))
        if not batch:
            return False
        now = datetime.datetime.fromtimestamp(self.wall(), UTC)
        bodies = [alert_body(self.settings, self.names, alert, firing, now) for _, _, alert, firing in batch]
        for _, _, alert, firing in batch:
            if firing and alert.announced == Alert.NEVER:
                alert.announced = Alert.OFFERED  # it may reach Alertmanager even if the answer does not come back
        try:
            refused = self.client.post_alerts(bodies)
        except AlertmanagerUnavailable:
            for book, key, _, _ in batch:
                book.pending[key] = None
            raise
        if refused:  # a defect here: retrying the same alerts would not help
            POST_FAILURES.inc()
            log.error("Alertmanager refused some of %d alerts: %s", len(bodies), refused)
        for book, key, alert, firing in batch:
            kind = alert.message.type
            if firing:
                if alert.announced != Alert.TAKEN:
                    alert.announced = Alert.TAKEN
                    POSTED.labels(kind).inc()
            else:
                book.close(key)
                RESOLVED.labels(kind).inc()
        return True


# -- the consumer ----------------------------------------------------------------------------------

class Forwarder:
    """The alerts topic, through a consumer group, into Dispatcher's books."""

    def __init__(self, settings: Settings, client: AlertmanagerClient, names: Names):
        self.settings = settings
        self.topic = settings.alerts_topic
        self.books: dict[int, PartitionBook] = {}
        self.dispatcher = Dispatcher(settings, names, client, self.books)
        self._warned: set[tuple[str, str]] = set()

    # Rebalance callbacks run inside poll(), on the client's event loop: no network calls here.
    def adopt(self, partitions) -> None:
        recent_ms = int(time.time() * 1000 - 2 * self.settings.forwarder_ends_after_s * 1000)
        for tp in partitions:
            self.books[tp.partition] = PartitionBook(tp.partition, recent_ms)
        log.info("assigned %s: rebuilding from the beginning", sorted(tp.partition for tp in partitions))

    def drop(self, partitions) -> None:
        for tp in partitions:
            self.books.pop(tp.partition, None)
        self.dispatcher.update_gauges()
        if partitions:
            log.info("revoked %s", sorted(tp.partition for tp in partitions))

    def take(self, partition: int, records) -> None:
        book = self.books.get(partition)
        if book is None:
            return
        book.seen = True
        for record in records:
            try:
                message = decode_alert(record.value)
            except BadAlertMessage as exc:
                self._skip("invalid", f"{self.topic}[{partition}] offset {record.offset}: not an alert message ({exc})")
                continue
            if message.replayed:
                SKIPPED.labels("replayed").inc()
                continue
            if message.type not in ALERT_KINDS:
                self._skip("unknown_type", f"alert type {message.type!r} is not forwarded (this version knows "
                                           f"{', '.join(ALERT_KINDS)})", once=message.type)
                continue
            # Codes repeat across alerts: one string each instead of one per alert.
            message.type, message.province, message.agency = (
                sys.intern(message.type), sys.intern(message.province), sys.intern(message.agency))
            if message.procedure_code:
                message.procedure_code = sys.intern(message.procedure_code)
            book.apply(message, record.timestamp)

    def _skip(self, reason: str, text: str, once: str | None = None) -> None:
        SKIPPED.labels(reason).inc()
        if once is None or (reason, once) not in self._warned:
            self._warned.add((reason, once or ""))
            log.warning("%s", text)

    def check_caught_up(self, consumer: KafkaConsumer) -> None:
        rebuilding = [book for book in self.books.values() if book.rebuilding]
        unknown = [TopicPartition(self.topic, book.partition) for book in rebuilding if book.end is None]
        if unknown:
            try:
                begins, ends = consumer.beginning_offsets(unknown), consumer.end_offsets(unknown)
            except KafkaError as exc:  # asked again after the next poll
                log.warning("cannot read the offsets of %s yet: %s", self.topic, exc)
                return
            for tp in unknown:
                book = self.books[tp.partition]
                book.begin, book.end = begins[tp], ends[tp]
        for book in rebuilding:
            tp = TopicPartition(self.topic, book.partition)
            if book.target is None:
                if book.end <= book.begin:
                    book.target = book.begin  # empty
                elif book.seen:
                    book.target = max(book.end, consumer.highwater(tp) or 0)
                else:
                    continue
            if consumer.position(tp) >= book.target:
                book.caught_up()
                log.info("partition %d rebuilt in %.1f s to offset %d: %d firing, %d resolutions to check",
                         book.partition, time.monotonic() - book.assigned_at, book.target, len(book.active),
                         len(book.unverified))

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        consumer = KafkaConsumer(
            bootstrap_servers=s.require_kafka().split(","), group_id=s.forwarder_group,
            client_id="opscentre-forwarder", enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(s.group_session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.group_heartbeat_s * 1000),
            max_poll_interval_ms=int(s.group_rebalance_timeout_s * 1000), max_poll_records=5000,
        )
        consumer.subscribe([self.topic], listener=_Rebalance(self, consumer))
        try:
            while not stop.is_set():
                batches = consumer.poll(timeout_ms=int(self.dispatcher.wait_s() * 1000))
                for tp, records in batches.items():
                    self.take(tp.partition, records)
                self.check_caught_up(consumer)
                self.dispatcher.step()
            self.dispatcher.drain(s.alertmanager_timeout_s)
        finally:
            consumer.close()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, forwarder: Forwarder, consumer: KafkaConsumer):
        self.forwarder, self.consumer = forwarder, consumer

    def on_partitions_revoked(self, revoked):
        self.forwarder.drop(revoked)

    def on_partitions_assigned(self, assigned):
        self.forwarder.adopt(assigned)
        if assigned:
            self.consumer.seek_to_beginning(*assigned)


def forward(settings: Settings) -> None:
    """Run until SIGTERM or Ctrl-C; what is pending is posted (briefly) before leaving the group."""
    url = alertmanager_url(settings)
    check_settings(settings)
    settings.require_kafka()
    names = Names(load_provinces(settings.provinces_file), load_catalogue(settings.catalogue_file))
    ensure_topics(settings)
    serve_metrics(settings)
    forwarder = Forwarder(settings, AlertmanagerClient(url, settings.alertmanager_timeout_s), names)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"alerts forward: {settings.alerts_topic} to {url} (group {settings.forwarder_group})", file=sys.stderr)
    forwarder.run(stop)
