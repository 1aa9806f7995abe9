"""Realistic service-usage and security traffic for a set of provinces.

Everything is drawn from one seeded generator on a virtual clock that starts
at `start_ms` and advances 1/rate seconds per event, so the same seed and
start give the same events; `opscentre simulate` paces the virtual clock to
the wall clock.

The shapes are plausible rather than official: traffic weighted by province
population, agencies with their own on-time rates, roughly a third of
dossiers fully online, completions of dossiers received days earlier
(the backlog) beside same-day procedures received and completed while the
simulation runs, payments and citizen feedback (the 1022 hotline first), and
security alerts with occasional attack bursts on one asset.
"""

from __future__ import annotations

import datetime as dt
import heapq
import random
import time

from opscentre.provinces import DEFAULT_PROVINCES

VN = dt.timezone(dt.timedelta(hours=7))
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# agency code: (weight, share of completions late, procedures)
AGENCIES = {
    "CAT": (22, 0.02, ("1.001612", "1.001613", "2.001159")),      # công an tỉnh: residence, ID
    "UBND-XA": (20, 0.06, ("1.001193", "1.003583", "2.000815")),  # commune: civil status
    "STP": (12, 0.04, ("1.004227", "2.000635", "1.001023")),      # justice: judicial records
    "SXD": (6, 0.12, ("1.009972", "1.009974")),                   # construction permits
    "SNNMT": (9, 0.15, ("1.004199", "1.001045", "2.000889")),     # agriculture & environment: land
    "STC": (8, 0.05, ("2.001955", "1.010026")),                   # finance: business registration
    "SYT": (5, 0.07, ("1.003645", "1.002256")),                   # health
    "SGDDT": (5, 0.03, ("1.005092", "2.001914")),                 # education
    "SCT": (4, 0.05, ("2.000190", "2.000620")),                   # industry & trade
    "SNV": (3, 0.04, ("1.009325",)),                              # home affairs
    "SVHTTDL": (3, 0.06, ("1.001029",)),                          # culture, sport, tourism
    "SKHCN": (3, 0.05, ("1.011585",)),                            # science & technology
}

# event type: share of traffic
MIX = {
    "dossier.received": 0.30,
    "dossier.completed": 0.26,
    "dossier.cancelled": 0.01,
    "payment.completed": 0.12,
    "feedback.received": 0.03,
    "feedback.resolved": 0.025,
    "document.exchanged": 0.20,
    "security.alert": 0.055,
}

SECURITY_CATEGORIES = {
    "web": ("waf", 0.35), "intrusion_detection": ("ids", 0.2), "authentication": ("iam", 0.15),
    "malware": ("edr", 0.08), "network": ("firewall", 0.1), "vulnerability": ("scanner", 0.05),
    "threat": ("ti", 0.03), "configuration": ("cspm", 0.02), "iam": ("iam", 0.02),
}
SEVERITY_WEIGHTS = (0.02, 0.30, 0.33, 0.22, 0.09, 0.035, 0.005)
ASSETS = ("dichvucong", "congthongtin", "motcua", "email", "vpn", "qlvb", "csdl-dancu")
BURSTS = (("brute_force", "authentication", "iam"), ("ddos", "network", "firewall"),
          ("sql_injection", "web", "waf"), ("defacement", "web", "waf"))


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, VN).isoformat(timespec="milliseconds")


class Simulator:
    def __init__(self, seed: int, rate: float, start_ms: int, provinces=None):
        self.rng = random.Random(seed)
        self.seed = seed
        self.rate = rate
        self.start_ms = start_ms
        self.sequence = 0
        codes = list(provinces) if provinces else list(DEFAULT_PROVINCES)
        self.provinces = codes
        self.province_weights = [DEFAULT_PROVINCES.get(code, ("", 1000))[1] for code in codes]
        self.agencies = list(AGENCIES)
        self.agency_weights = [AGENCIES[a][0] for a in self.agencies]
        self.types = list(MIX)
        self.type_weights = [MIX[t] for t in self.types]
        # Same-day dossiers received during the run, by completion time: (done_ms, sequence, received event)
        self.open_same_day: list = []
        self.burst = None  # (end_ms, province, asset, technique, category, sensor, attackers)
        self.next_burst_ms = start_ms + int(self.rng.expovariate(1 / (3 * MINUTE_MS)))

    def now_ms(self) -> int:
        return self.start_ms + int(self.sequence * 1000 / self.rate)

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self.seed}-{self.sequence:x}"

    def _envelope(self, event_type: str, now: int, province: str, agency: str, source: str) -> dict:
        return {
            "event_id": self._id("ev"),
            "event_type": event_type,
            "occurred_at": rfc3339(now),
            "province": province,
            "agency": agency,
            "source": source,
        }

    def next_event(self) -> dict:
        now = self.now_ms()
        self.sequence += 1
        rng = self.rng
        if self.burst is None and now >= self.next_burst_ms:
            self._start_burst(now)
        if self.burst is not None:
            if now >= self.burst[0]:
                self.burst = None
                self.next_burst_ms = now + int(rng.expovariate(1 / (3 * MINUTE_MS)))
            elif rng.random() < 0.25:
                return self._burst_alert(now)
        # Same-day dossiers come due: complete them (mostly in time) or leave them overdue.
        if self.open_same_day and self.open_same_day[0][0] <= now:
            return self._complete_same_day(now)
        event_type = rng.choices(self.types, self.type_weights)[0]
        province = rng.choices(self.provinces, self.province_weights)[0]
        agency = rng.choices(self.agencies, self.agency_weights)[0]
        return getattr(self, "_" + event_type.replace(".", "_"))(now, province, agency)

    # -- service events ---------------------------------------------------------------

    def _dossier_received(self, now, province, agency) -> dict:
        rng = self.rng
        procedure = rng.choice(AGENCIES[agency][2])
        level = rng.choices(("full_online", "partial_online", "offline"), (0.36, 0.42, 0.22))[0]
        if level == "full_online":
            channel = "online"
        elif level == "partial_online":
            channel = rng.choices(("online", "in_person"), (0.7, 0.3))[0]
        else:
            channel = rng.choices(("in_person", "postal"), (0.85, 0.15))[0]
        dossier = self._id("HS")
        same_day = rng.random() < 0.15
        if same_day:
            due = now + rng.randint(2, 20) * MINUTE_MS
        else:
            due = now + rng.randint(1, 15) * DAY_MS
        event = self._envelope("dossier.received", now, province, agency, "dvc-" + province)
        event.update(
            dossier_id=dossier, procedure_code=procedure, service_level=level, channel=channel,
            due_at=rfc3339(due), applicant_id=f"CCCD{rng.randrange(10**11, 10**12)}",
        )
        if same_day:
            late_share = AGENCIES[agency][1]
            roll = rng.random()
            if roll < 0.05:
                pass  # never completed: goes overdue
            else:
                late = roll < 0.05 + late_share
                span = due - now
                done = due + rng.randint(1, 10) * MINUTE_MS if late else now + int(span * rng.uniform(0.2, 0.95))
                heapq.heappush(self.open_same_day, (done, self.sequence, dict(event)))
        return event

    def _complete_same_day(self, now) -> dict:
        _, _, received = heapq.heappop(self.open_same_day)
        event = self._envelope("dossier.completed", now, received["province"], received["agency"], received["source"])
        event.update(
            dossier_id=received["dossier_id"], procedure_code=received["procedure_code"],
            due_at=received["due_at"], result="approved" if self.rng.random() < 0.94 else "rejected",
            digitized=self.rng.random() < 0.7,
        )
        return event

    def _dossier_completed(self, now, province, agency) -> dict:
        # A backlog dossier received days ago, before this run.
        rng = self.rng
        late = rng.random() < AGENCIES[agency][1]
        due = now - rng.randint(1, 72) * HOUR_MS if late else now + rng.randint(1, 240) * HOUR_MS
        event = self._envelope("dossier.completed", now, province, agency, "dvc-" + province)
        event.update(
            dossier_id=self._id("HSBL"), procedure_code=rng.choice(AGENCIES[agency][2]),
            due_at=rfc3339(due), result="approved" if rng.random() < 0.95 else "rejected",
            digitized=rng.random() < 0.65,
        )
        return event

    def _dossier_cancelled(self, now, province, agency) -> dict:
        event = self._envelope("dossier.cancelled", now, province, agency, "dvc-" + province)
        event.update(dossier_id=self._id("HSBL"), procedure_code=self.rng.choice(AGENCIES[agency][2]))
        return event

    def _payment_completed(self, now, province, agency) -> dict:
        rng = self.rng
        event = self._envelope("payment.completed", now, province, agency, "payment-gateway")
        event.update(
            dossier_id=self._id("HSBL"),
            amount_vnd=rng.choice((10_000, 15_000, 20_000, 30_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)),
            method=rng.choices(("online", "counter"), (0.55, 0.45))[0],
        )
        return event

    def _feedback_received(self, now, province, agency) -> dict:
        rng = self.rng
        feedback = self._id("PAKN")
        event = self._envelope("feedback.received", now, province, agency, "1022-" + province)
        due = now + rng.randint(5, 15) * DAY_MS
        event.update(
            feedback_id=feedback,
            channel=rng.choices(("hotline_1022", "portal", "app", "field_report"), (0.45, 0.25, 0.22, 0.08))[0],
            due_at=rfc3339(due),
        )
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
        categories = list(SECURITY_CATEGORIES)
        category = rng.choices(categories, [SECURITY_CATEGORIES[c][1] for c in categories])[0]
        severity = rng.choices(range(7), SEVERITY_WEIGHTS)[0]
        action = rng.choices(("blocked", "detected", "allowed"), (0.6, 0.35, 0.05))[0]
        return self._alert(now, province, category, SECURITY_CATEGORIES[category][0], severity, action,
                           f"{rng.choice(ASSETS)}-{province}", self._ip(), None, 1)

    def _start_burst(self, now) -> None:
        rng = self.rng
        technique, category, sensor = rng.choice(BURSTS)
        province = rng.choices(self.provinces, self.province_weights)[0]
        attackers = [self._ip() for _ in range(rng.randint(1, 8))]
        self.burst = (now + rng.randint(10, 45) * 1000, province, f"{rng.choice(ASSETS)}-{province}",
                      technique, category, sensor, attackers)

    def _burst_alert(self, now) -> dict:
        _, province, asset, technique, category, sensor, attackers = self.burst
        rng = self.rng
        severity = rng.choices((3, 4, 5), (0.3, 0.5, 0.2))[0]
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
             paced: bool = True, progress=None) -> int:
    """Send events at `rate` per second for `duration_s` (None: until interrupted); returns the count."""
    start_ms = int(time.time() * 1000) if start_ms is None else start_ms
    simulator = Simulator(seed, rate, start_ms)
    total = None if duration_s is None else int(rate * duration_s)
    wall_start = time.monotonic()
    sent = 0
    chunk = max(1, int(rate / 20))
    while total is None or sent < total:
        count = chunk if total is None else min(chunk, total - sent)
        for _ in range(count):
            producer.send(simulator.next_event())
        sent += count
        producer.poll()
        if paced:
            ahead = sent / rate - (time.monotonic() - wall_start)
            if ahead > 0:
                time.sleep(ahead)
        if progress is not None:
            progress(sent)
    producer.flush()
    return sent
