"""Realistic service-usage and security traffic for a set of provinces.

Everything is drawn from one seeded generator on a virtual clock that starts
at `start_ms`, so the same seed and start give the same events; `opscentre
simulate` paces the virtual clock to the wall clock.

The shapes are plausible rather than official:
- traffic weighted by province population; counters and officials work
  office hours only (producers.office_hours), people file online and call
  the 1022 hotline around the clock but less at night and at weekends, and
  sensors raise security alerts at any hour (with attack bursts on one asset);
  `rate` is the weekday office-hours peak, `steady` makes every hour a peak;
- every procedure has a legal time limit in working time, so a dossier filed
  on Friday evening is due on Monday;
- each agency has a processing-time distribution (lognormal in working time
  around a share of the limit) that gives it its on-time rate; now and then
  the desk of one agency in one province falls behind (staff away, a system
  down) and works at a third of its pace for a few hours, so a backlog builds
  up, its dossiers finish late or go overdue, and it drains afterwards;
- completions of dossiers received before the run, payments and feedback
  resolutions for items never seen in the stream (the backlog every real
  province has).

Completions are kept in memory for dossiers finishing within a working day
of their receipt; longer procedures are completed only as backlog, so in runs longer
than their limits their dossiers show as overdue. With `history`, every dossier
received is completed when its processing ends and every feedback received is
resolved (a long history, as bench/read_scale.py loads: the items in progress,
weeks of them, are held in memory), so the items open are those in progress and
the few never processed, not every long procedure ever filed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import heapq
import math
import random
import statistics
import time
from bisect import bisect_right
from itertools import accumulate

from opscentre.provinces import DEFAULT_PROVINCES

from .office_hours import HOUR_MS, MINUTE_MS, WORKING_DAY_MS, OfficeHours

VN = dt.timezone(dt.timedelta(hours=7))
COUNTER, ONLINE, HOTLINE, ALWAYS = range(4)  # indexes into OfficeHours.activity()


@dataclasses.dataclass(frozen=True)
class Agency:
    weight: int  # share of a province's traffic
    late_share: float  # dossiers completed after their legal limit, when the desk keeps up
    procedures: tuple[tuple[str, int], ...]  # (procedure code, legal limit in working minutes)
    spread: float = 0.45  # sigma of the lognormal processing time

    @functools.cached_property
    def pace(self) -> float:
        """Median processing time as a share of the limit, so that `late_share` finish after it."""
        return math.exp(-self.spread * statistics.NormalDist().inv_cdf(1 - self.late_share))


DAYS = WORKING_DAY_MS // MINUTE_MS  # working minutes in a working day
AGENCIES = {
    "CAT": Agency(22, 0.02, (("1.001612", 7 * DAYS), ("1.001613", 3 * DAYS), ("2.001159", 30))),  # police: residence, ID
    "UBND-XA": Agency(20, 0.06, (("1.001193", 30), ("1.003583", 240), ("2.000815", 20))),  # commune: civil status
    "STP": Agency(12, 0.04, (("1.004227", 10 * DAYS), ("2.000635", 3 * DAYS), ("1.001023", 30))),  # justice
    "SXD": Agency(6, 0.12, (("1.009972", 15 * DAYS), ("1.009974", 20 * DAYS))),  # construction permits
    "SNNMT": Agency(9, 0.15, (("1.004199", 30 * DAYS), ("1.001045", 10 * DAYS), ("2.000889", 240))),  # land
    "STC": Agency(8, 0.05, (("2.001955", 3 * DAYS), ("1.010026", 3 * DAYS))),  # finance: business registration
    "SYT": Agency(5, 0.07, (("1.003645", 10 * DAYS), ("1.002256", 240))),  # health
    "SGDDT": Agency(5, 0.03, (("1.005092", 5 * DAYS), ("2.001914", 30))),  # education
    "SCT": Agency(4, 0.05, (("2.000190", 7 * DAYS), ("2.000620", 15 * DAYS))),  # industry & trade
    "SNV": Agency(3, 0.04, (("1.009325", 10 * DAYS),)),  # home affairs
    "SVHTTDL": Agency(3, 0.06, (("1.001029", 5 * DAYS),)),  # culture, sport, tourism
    "SKHCN": Agency(3, 0.05, (("1.011585", 10 * DAYS),)),  # science & technology
}

# What happens, with its share of all traffic at the weekday office-hours peak and its channel.
# Completions of dossiers received during the run come on top, when they are due.
TRAFFIC = (
    ("dossier_received_online", 0.196, ONLINE),
    ("dossier_received_counter", 0.104, COUNTER),
    ("dossier_completed", 0.16, COUNTER),
    ("dossier_cancelled", 0.01, COUNTER),
    ("payment_online", 0.066, ONLINE),
    ("payment_counter", 0.054, COUNTER),
    ("feedback_received", 0.03, HOTLINE),
    ("feedback_resolved", 0.025, COUNTER),
    ("document_exchanged", 0.20, COUNTER),
    ("security_alert", 0.055, ALWAYS),
)
NEVER_PROCESSED = 0.03  # dossiers left waiting (missing papers, lost): they go overdue
WITHDRAWN = 0.015  # dossiers cancelled when their turn comes
TRACKED_FOR_MS = WORKING_DAY_MS  # completions further ahead (in working time) are not kept
FALLING_BEHIND_EVERY_MS = 2 * HOUR_MS  # mean time between desks falling behind
FALLEN_BEHIND_CAPACITY = 0.35  # share of its usual pace a desk keeps while it is behind
DESK_SPARE_CAPACITY = 0.5  # how fast a desk works off its backlog afterwards, per unit of working time

SECURITY_CATEGORIES = {
    "web": ("waf", 0.35), "intrusion_detection": ("ids", 0.2), "authentication": ("iam", 0.15),
    "malware": ("edr", 0.08), "network": ("firewall", 0.1), "vulnerability": ("scanner", 0.05),
    "threat": ("ti", 0.03), "configuration": ("cspm", 0.02), "iam": ("iam", 0.02),
}
SEVERITY_WEIGHTS = (0.02, 0.30, 0.33, 0.22, 0.09, 0.035, 0.005)
ASSETS = ("dichvucong", "congthongtin", "motcua", "email", "vpn", "qlvb", "csdl-dancu")
BURSTS = (("brute_force", "authentication", "iam"), ("ddos", "network", "firewall"),
          ("sql_injection", "web", "waf"), ("defacement", "web", "waf"))


_MINUTES: dict[int, str] = {}  # "YYYY-MM-DDTHH:MM:" by epoch minute: formatting a datetime costs more than an event


def rfc3339(ms: int) -> str:
    """`ms` as local time with milliseconds, as datetime.isoformat(timespec="milliseconds") writes it."""
    minute, into_minute = divmod(int(ms), 60_000)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) > 100_000:
            _MINUTES.clear()
        prefix = _MINUTES[minute] = dt.datetime.fromtimestamp(minute * 60, VN).strftime("%Y-%m-%dT%H:%M:")
    second, milli = divmod(into_minute, 1000)
    return f"{prefix}{second:02d}.{milli:03d}+07:00"


class Weighted:
    """A weighted choice drawn as random.choices(population, weights)[0] draws it (the same random
    number, the same pick), without summing the weights again at every draw."""

    __slots__ = ("population", "cumulative", "total", "last")

    def __init__(self, population, weights):
        self.population = tuple(population)
        self.cumulative = list(accumulate(weights))
        self.total = self.cumulative[-1] + 0.0
        self.last = len(self.cumulative) - 1

    def pick(self, rng: random.Random):
        return self.population[bisect_right(self.cumulative, rng.random() * self.total, 0, self.last)]


FEEDBACK_CHANNELS = Weighted(("hotline_1022", "portal", "app", "field_report"), (0.45, 0.25, 0.22, 0.08))
ALERT_CATEGORIES = Weighted(SECURITY_CATEGORIES, [weight for _, weight in SECURITY_CATEGORIES.values()])
ALERT_SEVERITIES = Weighted(range(7), SEVERITY_WEIGHTS)
ALERT_ACTIONS = Weighted(("blocked", "detected", "allowed"), (0.6, 0.35, 0.05))
BURST_SEVERITIES = Weighted((3, 4, 5), (0.3, 0.5, 0.2))


class Simulator:
    def __init__(self, seed: int, rate: float, start_ms: int, provinces=None, steady: bool = False,
                 history: bool = False):
        self.rng = random.Random(seed)
        self.seed = seed
        self.rate = rate
        self.start_ms = start_ms
        self.clock_ms = float(start_ms)
        self.sequence = 0
        self.hours = OfficeHours(always_open=steady)
        codes = list(provinces) if provinces else list(DEFAULT_PROVINCES)
        self.province_choice = Weighted(codes, [DEFAULT_PROVINCES.get(code, ("", 1000))[1] for code in codes])
        self.agency_choice = Weighted(AGENCIES, [profile.weight for profile in AGENCIES.values()])
        self._traffic_by_slot: dict[int, tuple[list, float]] = {}
        # Dossiers received during the run, by completion time:
        # (done_ms, sequence at receipt, province, agency, procedure, due_ms)
        self.pending: list = []
        self.history = history
        # With `history`, feedback received, by resolution time: (done_ms, sequence at receipt, province, agency, due_ms)
        self.feedback_pending: list = []
        self.behind: dict[tuple[str, str], tuple[int, int]] = {}  # desk -> (start, end) of its slow spell
        self.burst = None  # (end_ms, province, asset, technique, category, sensor, attackers)
        self.next_burst_ms = start_ms + int(self.rng.expovariate(1 / (3 * MINUTE_MS)))
        self.next_fall_behind_ms = start_ms + int(self.rng.expovariate(1 / FALLING_BEHIND_EVERY_MS))

    def now_ms(self) -> int:
        return int(self.clock_ms)

    def _id(self, prefix: str, sequence: int | None = None) -> str:
        return f"{prefix}-{self.seed}-{self.sequence if sequence is None else sequence:x}"

    def _envelope(self, event_type: str, now: int, province: str, agency: str, source: str) -> dict:
        return {
            "event_id": self._id("ev"),
            "event_type": event_type,
            "occurred_at": rfc3339(now),
            "province": province,
            "agency": agency,
            "source": source,
        }

    def _traffic(self, now: int) -> tuple[list, float]:
        """Cumulative weights of TRAFFIC and the share of peak traffic, for the quarter hour of `now`."""
        slot = now // (15 * MINUTE_MS)
        cached = self._traffic_by_slot.get(slot)
        if cached is None:
            activity = self.hours.activity(slot * 15 * MINUTE_MS)
            cumulative, total = [], 0.0
            for _, share, channel in TRAFFIC:
                total += share * activity[channel]
                cumulative.append(total)
            cached = (cumulative, total / sum(share for _, share, _ in TRAFFIC))
            if len(self._traffic_by_slot) > 1000:
                self._traffic_by_slot.clear()
            self._traffic_by_slot[slot] = cached
        return cached

    def next_event(self) -> dict:
        now = self.now_ms()
        cumulative, busy = self._traffic(now)
        self.clock_ms += 1000 / (self.rate * busy)
        self.sequence += 1
        rng = self.rng
        if now >= self.next_fall_behind_ms:
            desk = (self.province_choice.pick(rng),
                    self.agency_choice.pick(rng))
            self.fall_behind(*desk, now, self.hours.add(now, rng.randint(1, 4) * HOUR_MS))
            self.next_fall_behind_ms = now + int(rng.expovariate(1 / FALLING_BEHIND_EVERY_MS))
        if self.burst is None and now >= self.next_burst_ms:
            self._start_burst(now)
        if self.burst is not None:
            if now >= self.burst[0]:
                self.burst = None
                self.next_burst_ms = now + int(rng.expovariate(1 / (3 * MINUTE_MS)))
            elif rng.random() < 0.25:
                return self._burst_alert(now)
        if self.pending and self.pending[0][0] <= now:
            return self._finish_pending(now)
        if self.feedback_pending and self.feedback_pending[0][0] <= now:
            return self._resolve_pending_feedback(now)
        what = TRAFFIC[bisect_right(cumulative, rng.random() * cumulative[-1])][0]
        province = self.province_choice.pick(rng)
        agency = self.agency_choice.pick(rng)
        return getattr(self, "_" + what)(now, province, agency)

    def fall_behind(self, province: str, agency: str, from_ms: int, until_ms: int) -> None:
        """The desk of `agency` in `province` works at FALLEN_BEHIND_CAPACITY from `from_ms` to `until_ms`."""
        self.behind[(province, agency)] = (from_ms, until_ms)

    # -- service events ---------------------------------------------------------------

    def _dossier_received_online(self, now, province, agency) -> dict:
        level = "full_online" if self.rng.random() < 0.55 else "partial_online"
        return self._dossier_received(now, province, agency, level, "online")

    def _dossier_received_counter(self, now, province, agency) -> dict:
        rng = self.rng
        if rng.random() < 0.36:
            return self._dossier_received(now, province, agency, "partial_online", "in_person")
        return self._dossier_received(now, province, agency, "offline", "in_person" if rng.random() < 0.85 else "postal")

    def _dossier_received(self, now, province, agency, level, channel) -> dict:
        rng = self.rng
        procedure, limit_minutes = rng.choice(AGENCIES[agency].procedures)
        due = self.hours.add(now, limit_minutes * MINUTE_MS)
        event = self._envelope("dossier.received", now, province, agency, "dvc-" + province)
        event.update(
            dossier_id=self._id("HS"), procedure_code=procedure, service_level=level, channel=channel,
            due_at=rfc3339(due), applicant_id=f"CCCD{rng.randrange(10**11, 10**12)}",
        )
        if rng.random() >= NEVER_PROCESSED:
            done = self._desk_takes(now, province, agency, limit_minutes * MINUTE_MS)
            if self.history or done <= self.hours.add(now, TRACKED_FOR_MS):
                heapq.heappush(self.pending, (done, self.sequence, province, agency, procedure, due))
        return event

    def _desk_takes(self, now: int, province: str, agency: str, limit_ms: int) -> int:
        """When a dossier received at `now` is finished: after the desk's backlog, then its processing time."""
        desk = (province, agency)
        spell = self.behind.get(desk)
        backlog_ms = 0
        if spell is not None:
            # A fluid queue: while slow the desk's backlog grows by (1/capacity - 1) of the time
            # that passes; afterwards it shrinks at DESK_SPARE_CAPACITY.
            began, until = spell
            hours = self.hours
            grown = hours.between(began, min(now, until)) * (1 / FALLEN_BEHIND_CAPACITY - 1)
            backlog_ms = int(grown - DESK_SPARE_CAPACITY * hours.between(until, now))
            if backlog_ms <= 0 and now >= until:
                del self.behind[desk]
            backlog_ms = max(0, backlog_ms)
        return self.hours.add(self.hours.add(now, backlog_ms), self._processing_ms(agency, limit_ms))

    def _processing_ms(self, agency: str, limit_ms: int) -> int:
        profile = AGENCIES[agency]
        return int(limit_ms * profile.pace * math.exp(profile.spread * self.rng.gauss(0.0, 1.0)))

    def _finish_pending(self, now) -> dict:
        _, received_at, province, agency, procedure, due = heapq.heappop(self.pending)
        dossier = self._id("HS", received_at)
        if self.rng.random() < WITHDRAWN:
            event = self._envelope("dossier.cancelled", now, province, agency, "dvc-" + province)
            event.update(dossier_id=dossier, procedure_code=procedure)
            return event
        event = self._envelope("dossier.completed", now, province, agency, "dvc-" + province)
        event.update(
            dossier_id=dossier, procedure_code=procedure, due_at=rfc3339(due),
            result="approved" if self.rng.random() < 0.94 else "rejected", digitized=self.rng.random() < 0.7,
        )
        return event

    def _dossier_completed(self, now, province, agency) -> dict:
        # A dossier received before the run: its lateness follows the agency's processing times.
        rng = self.rng
        procedure, limit_minutes = rng.choice(AGENCIES[agency].procedures)
        limit_ms = limit_minutes * MINUTE_MS
        due = now + limit_ms - self._processing_ms(agency, limit_ms)
        event = self._envelope("dossier.completed", now, province, agency, "dvc-" + province)
        event.update(
            dossier_id=self._id("HSBL"), procedure_code=procedure,
            due_at=rfc3339(due), result="approved" if rng.random() < 0.95 else "rejected",
            digitized=rng.random() < 0.65,
        )
        return event

    def _dossier_cancelled(self, now, province, agency) -> dict:
        event = self._envelope("dossier.cancelled", now, province, agency, "dvc-" + province)
        event.update(dossier_id=self._id("HSBL"), procedure_code=self.rng.choice(AGENCIES[agency].procedures)[0])
        return event

    def _payment_online(self, now, province, agency) -> dict:
        return self._payment(now, province, agency, "online")

    def _payment_counter(self, now, province, agency) -> dict:
        return self._payment(now, province, agency, "counter")

    def _payment(self, now, province, agency, method) -> dict:
        event = self._envelope("payment.completed", now, province, agency, "payment-gateway")
        event.update(
            dossier_id=self._id("HSBL"),
            amount_vnd=self.rng.choice((10_000, 15_000, 20_000, 30_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)),
            method=method,
        )
        return event

    def _feedback_received(self, now, province, agency) -> dict:
        rng = self.rng
        event = self._envelope("feedback.received", now, province, agency, "1022-" + province)
        limit_days = rng.randint(5, 15)
        due = self.hours.add(now, limit_days * WORKING_DAY_MS)
        event.update(
            feedback_id=self._id("PAKN"),
            channel=FEEDBACK_CHANNELS.pick(rng),
            due_at=rfc3339(due),
        )
        if self.history:  # 0.6 of the limit at the median, spread as a desk's: about one in eight late
            took = int(limit_days * WORKING_DAY_MS * 0.6 * math.exp(0.45 * rng.gauss(0.0, 1.0)))
            heapq.heappush(self.feedback_pending, (self.hours.add(now, took), self.sequence, province, agency, due))
        return event

    def _resolve_pending_feedback(self, now) -> dict:
        _, received_at, province, agency, due = heapq.heappop(self.feedback_pending)
        event = self._envelope("feedback.resolved", now, province, agency, "1022-" + province)
        event.update(feedback_id=self._id("PAKN", received_at), due_at=rfc3339(due),
                     satisfied=self.rng.random() < (0.85 if now <= due else 0.6))
        return event

    def _feedback_resolved(self, now, province, agency) -> dict:
        rng = self.rng
        late = rng.random() < 0.12
        due = now - rng.randint(1, 96) * HOUR_MS if late else now + rng.randint(1, 200) * HOUR_MS
        event = self._envelope("feedback.resolved", now, province, agency, "1022-" + province)
        event.update(feedback_id=self._id("PAKNBL"), due_at=rfc3339(due), satisfied=rng.random() < (0.6 if late else 0.85))
        return event

    def _document_exchanged(self, now, province, agency) -> dict:
        event = self._envelope("document.exchanged", now, province, agency, "lgsp-" + province)
        event.update(document_id=self._id("VB"), direction=self.rng.choice(("sent", "received")))
        return event

    # -- security events --------------------------------------------------------------

    def _security_alert(self, now, province, agency) -> dict:
        rng = self.rng
        category = ALERT_CATEGORIES.pick(rng)
        severity = ALERT_SEVERITIES.pick(rng)
        action = ALERT_ACTIONS.pick(rng)
        return self._alert(now, province, category, SECURITY_CATEGORIES[category][0], severity, action,
                           f"{rng.choice(ASSETS)}-{province}", self._ip(), None, 1)

    def _start_burst(self, now) -> None:
        rng = self.rng
        technique, category, sensor = rng.choice(BURSTS)
        province = self.province_choice.pick(rng)
        attackers = [self._ip() for _ in range(rng.randint(1, 8))]
        self.burst = (now + rng.randint(10, 45) * 1000, province, f"{rng.choice(ASSETS)}-{province}",
                      technique, category, sensor, attackers)

    def _burst_alert(self, now) -> dict:
        _, province, asset, technique, category, sensor, attackers = self.burst
        rng = self.rng
        severity = BURST_SEVERITIES.pick(rng)
        action = "blocked" if rng.random() < 0.85 else "detected"
        return self._alert(now, province, category, sensor, severity, action, asset, rng.choice(attackers),
                           technique, rng.randint(1, 50))

    def _alert(self, now, province, category, sensor, severity, action, asset, ip, technique, count) -> dict:
        event = {
            "event_id": self._id("sec"),
            "event_type": "security.alert",
            "occurred_at": now,  # sensors report epoch milliseconds
            "province": province,
            "agency": "STTTT-SOC",
            "source": f"{sensor}-{province}",
            "category": category,
            "severity": severity,
            "action": action,
            "sensor": sensor,
            "dst_asset": asset,
            "src_ip": ip,
            "rule_id": f"{sensor}-{self.rng.randint(1000, 1200)}",
            "count": count,
        }
        if technique:
            event["technique"] = technique
        return event

    def _ip(self) -> str:
        rng = self.rng
        return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def simulate(producer, rate: float, duration_s: float | None, seed: int, start_ms: int | None = None,
             paced: bool = True, progress=None, steady: bool = False, simulator: Simulator | None = None) -> int:
    """Send `duration_s` seconds of traffic (None: until interrupted) peaking at `rate` events/s; returns the count.
    Given a `simulator`, its traffic goes on from its clock, with the dossiers it holds in progress
    (a history sent in several runs); `seed`, `start_ms` and `steady` are then its own."""
    if simulator is None:
        start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        simulator = Simulator(seed, rate, start_ms, steady=steady)
    start_ms = simulator.now_ms()
    end_ms = None if duration_s is None else start_ms + duration_s * 1000
    wall_start = time.monotonic()
    sent = 0
    chunk = max(1, int(rate / 20))
    while end_ms is None or simulator.clock_ms < end_ms:
        for _ in range(chunk):
            if end_ms is not None and simulator.clock_ms >= end_ms:
                break
            producer.send(simulator.next_event())
            sent += 1
        producer.poll()
        if paced:
            ahead = (simulator.clock_ms - start_ms) / 1000 - (time.monotonic() - wall_start)
            if ahead > 0:
                time.sleep(ahead)
        if progress is not None:
            progress(sent)
    producer.flush()
    return sent
