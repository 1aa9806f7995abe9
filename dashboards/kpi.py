"""The KPIs of CONTRACT §2, computed in ClickHouse.

A period [from, to) is split into the fewest whole buckets the per-partition
tables hold — months, then days, hours and minutes towards each end — and the
partial minutes at either end, read from the raw events: any period is exact,
a minute-aligned one touches no raw data, and a year reads about twelve months,
two sets of days and hours and minutes at most, whatever history is stored.
"""

from __future__ import annotations

import datetime as dt

from opscentre.catalogue import Catalogue, default_catalogue
from opscentre.clickhouse import Store, quote
from opscentre.events import HIGH_SEVERITY
from opscentre.measures import SERVICE_COUNTERS
from sinks.clickhouse_sink import (
    GRAINS,
    LIFECYCLE_MINUTE,
    SECURITY_MINUTE,
    SERVICE_MINUTE,
    RAW_KEYS,
    grain_table,
    raw_rows_between,
)

# Each service counter over raw service_events rows (the partial minutes at a period's ends).
RAW_SERVICE = {
    "events": "count()",
    "dossiers_received": "countIf(event_type = 'dossier.received')",
    "dossiers_received_full_online": "countIf(event_type = 'dossier.received' AND service_level = 'full_online')",
    "dossiers_received_partial_online": "countIf(event_type = 'dossier.received' AND service_level = 'partial_online')",
    "dossiers_completed": "countIf(event_type = 'dossier.completed')",
    "dossiers_completed_on_time": "countIf(event_type = 'dossier.completed' AND on_time = 1)",
    "dossiers_cancelled": "countIf(event_type = 'dossier.cancelled')",
    "payments_total": "countIf(event_type = 'payment.completed')",
    "payments_online": "countIf(event_type = 'payment.completed' AND method = 'online')",
    "payments_vnd": "sumIf(amount_vnd, event_type = 'payment.completed')",
    "payments_online_vnd": "sumIf(amount_vnd, event_type = 'payment.completed' AND method = 'online')",
    "feedback_received": "countIf(event_type = 'feedback.received')",
    "feedback_resolved": "countIf(event_type = 'feedback.resolved')",
    "feedback_resolved_on_time": "countIf(event_type = 'feedback.resolved' AND on_time = 1)",
    "feedback_satisfied": "countIf(event_type = 'feedback.resolved' AND satisfied = 1)",
    "documents_sent": "countIf(event_type = 'document.exchanged' AND direction = 'sent')",
    "documents_received": "countIf(event_type = 'document.exchanged' AND direction = 'received')",
}
assert tuple(RAW_SERVICE) == SERVICE_COUNTERS

SECURITY_KEYS = ("security_alerts", "security_alerts_high_or_critical", "security_alerts_blocked")
# The security keys over bucket rows (security_minute, _hour, ...) and over raw security_events rows.
BUCKET_SECURITY = (
    "sum(alerts)", f"sumIf(alerts, severity >= {HIGH_SEVERITY})", "sumIf(alerts, action = 'blocked')",
)
RAW_SECURITY = (
    "sum(count)", f"sumIf(count, severity >= {HIGH_SEVERITY})", "sumIf(count, action = 'blocked')",
)

CONTRACT_KEYS = (
    "province", "from", "to",
    "dossiers_received", "dossiers_received_full_online", "dossiers_received_partial_online",
    "dossiers_completed", "dossiers_completed_on_time", "dossiers_cancelled", "dossiers_overdue_open",
    "full_online_rate", "on_time_rate",
    "payments_total", "payments_online", "payments_online_vnd", "online_payment_rate",
    "feedback_received", "feedback_resolved", "feedback_resolved_on_time", "feedback_satisfied",
    "documents_sent", "documents_received",
    "security_alerts", "security_alerts_high_or_critical", "security_alerts_blocked",
)
# Keys beyond the contract's, after them.
EXTENSION_KEYS = ("unknown_agencies",)


def parse_time(text: str) -> dt.datetime:
    """RFC 3339 with an offset ('Z' allowed); raises ValueError with a one-line message."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an RFC 3339 time such as 2026-11-22T08:00:00+07:00, got {text!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no offset (add +07:00 or Z)")
    return value


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp()) * 1000 + value.microsecond // 1000


def rate(numerator: int, denominator: int):
    return None if not denominator else round(numerator / denominator, 4)


class Period:
    """[from, to) as milliseconds: whole buckets (grain, start s, end s) and the partial edges (ms)."""

    def __init__(self, start: dt.datetime, end: dt.datetime):
        if end <= start:
            raise ValueError("--to must be after --from")
        self.start, self.end = start, end
        self.start_ms, self.end_ms = _ms(start), _ms(end)
        first_minute = -(-self.start_ms // 60000) * 60000
        last_minute = self.end_ms // 60000 * 60000
        if first_minute >= last_minute:  # no whole minute inside
            self.buckets = []
            self.edges = [(self.start_ms, self.end_ms)]
        else:
            self.buckets = whole_buckets(first_minute // 1000, last_minute // 1000)
            self.edges = [(a, b) for a, b in ((self.start_ms, first_minute), (last_minute, self.end_ms)) if a < b]


def whole_buckets(start_s: int, end_s: int) -> list:
    """[start, end) (whole minutes, epoch s) as the fewest buckets: (Grain, start s, end s), coarse in the
    middle, finer towards each end."""
    left, right = [], []
    low, high = start_s, end_s
    for finer, coarser in zip(GRAINS, GRAINS[1:]):
        first = coarser.bucket(low)
        if first < low:
            first = coarser.next(first)
        last = coarser.bucket(high)
        if first >= last:  # no whole coarser bucket inside
            return left + [(finer, low, high)] + right[::-1]
        if low < first:
            left.append((finer, low, first))
        if last < high:
            right.append((finer, last, high))
        low, high = first, last
    return left + [(GRAINS[-1], low, high)] + right[::-1]


def _province_filter(province: str | None) -> str:
    return "" if province is None else f" AND province = {quote(province)}"


def _add(totals: dict, group, keys, values) -> None:
    row = totals.setdefault(group, {})
    for key, value in zip(keys, values):
        row[key] = row.get(key, 0) + int(value or 0)


def counters(store: Store, period: Period, province: str | None, by_agency: bool = False,
             service: bool = True) -> dict:
    """{province: {counter: value}} for service and security counters over the period (security
    only, without `service`); {(province, agency): ...} for service counters only with `by_agency`."""
    totals: dict = {}
    where_province = _province_filter(province)
    group = "province, agency" if by_agency else "province"
    width = 2 if by_agency else 1
    queries = []  # (SQL, keys)
    families = [(SERVICE_MINUTE, [f"sum({name})" for name in SERVICE_COUNTERS], SERVICE_COUNTERS)] if service else []
    if not by_agency:
        families.append((SECURITY_MINUTE, list(BUCKET_SECURITY), SECURITY_KEYS))
    for table, expressions, keys in families:
        parts = [
            f"SELECT {group}, {', '.join(expressions)} FROM {store.table(grain_table(table, grain))} FINAL "
            f"WHERE {grain.windows_between(a, b)}{where_province} GROUP BY {group}"
            for grain, a, b in period.buckets
        ]
        if parts:
            queries.append((" UNION ALL ".join(parts), keys))
    for a_ms, b_ms in period.edges:
        if service:
            queries.append((f"SELECT {group}, {', '.join(RAW_SERVICE.values())} FROM {store.table('service_events')} "
                            f"FINAL WHERE {raw_rows_between('service_events', a_ms, b_ms)}{where_province} "
                            f"GROUP BY {group}", SERVICE_COUNTERS))
        if not by_agency:
            queries.append((f"SELECT {group}, {', '.join(RAW_SECURITY)} FROM {store.table('security_events')} FINAL "
                            f"WHERE {raw_rows_between('security_events', a_ms, b_ms)}{where_province} GROUP BY {group}",
                            SECURITY_KEYS))
    for sql, keys in queries:
        for row in store.query(sql):
            _add(totals, tuple(row[:width]) if by_agency else row[0], keys, row[width:])
    return totals


def overdue_open(store: Store, end_ms: int, province: str | None, by_agency: bool = False) -> dict:
    """{province (or (province, agency)): dossiers open at `to` and due before it} (CONTRACT §2)."""
    return lifecycle_count(store, end_ms, "dossiers_overdue", province, by_agency)


def carried_over(store: Store, start_ms: int, province: str | None, by_agency: bool = False) -> dict:
    """{province (or (province, agency)): dossiers received before `from` and still open at `from`}."""
    return lifecycle_count(store, start_ms, "dossiers_open", province, by_agency)


_EDGE_FAMILIES = {
    "dossiers_open": ("dossier", "open"), "dossiers_overdue": ("dossier", "overdue"),
    "feedback_open": ("feedback", "open"), "feedback_overdue": ("feedback", "overdue"),
}


def lifecycle_count(store: Store, t_ms: int, interval: str, province: str | None, by_agency: bool = False,
                    by_procedure: bool = False) -> dict:
    """Items whose interval (`dossiers_open`, `dossiers_overdue`, `feedback_open`, `feedback_overdue`)
    holds the instant t: the transitions before t (streams.lifecycle), summed over the fewest whole
    buckets since 1970 (a year of history is about twelve month rows) and the edges of the last,
    partial minute. {province, or (province, agency[, procedure_code]): count}, zeros left out."""
    group = "province" + (", agency" if by_agency or by_procedure else "") + (", procedure_code" if by_procedure else "")
    width = group.count(",") + 1
    where_province = _province_filter(province)
    minute_s = int(t_ms) // 60000 * 60
    net = f"sum({interval}_entered) - sum({interval}_left)"
    parts = [
        f"SELECT {group}, {net} FROM {store.table(grain_table(LIFECYCLE_MINUTE, grain))} FINAL "
        f"WHERE {grain.windows_between(a, b)}{where_province} GROUP BY {group}"
        for grain, a, b in (whole_buckets(0, minute_s) if minute_s > 0 else [])
    ]
    kind, family = _EDGE_FAMILIES[interval]
    if t_ms > minute_s * 1000:
        parts.append(
            f"SELECT {group}, sumIf(weight, direction = 'entered') - sumIf(weight, direction = 'left') "
            f"FROM {store.table('lifecycle_edges')} FINAL WHERE kind = '{kind}' AND family = '{family}' "
            f"AND {RAW_KEYS['lifecycle_edges'].between(minute_s * 1000, int(t_ms) - 1)} "
            f"AND at_ms >= {minute_s * 1000} AND at_ms < {int(t_ms)}{where_province} GROUP BY {group}")
    totals: dict = {}
    if parts:
        for row in store.query(" UNION ALL ".join(parts)):
            group_key = tuple(row[:width]) if width > 1 else row[0]
            totals[group_key] = totals.get(group_key, 0) + int(row[-1])
    return {group_key: count for group_key, count in totals.items() if count}


def kpis(store: Store, province: str, start: dt.datetime, end: dt.datetime,
         catalogue: Catalogue | None = None) -> list[dict]:
    """One dict per province (CONTRACT §2 keys, and `unknown_agencies`: {agency code: service
    events} for codes not in the catalogue); `province='all'` for every province seen."""
    period = Period(start, end)
    selected = None if province == "all" else province
    # The service counters are read once, by agency (for the codes not in the catalogue), and
    # summed here per province: a third fewer queries than reading them per province too.
    totals = counters(store, period, selected, service=False)
    overdue = overdue_open(store, period.end_ms, selected)
    catalogue = catalogue or default_catalogue()
    unknown: dict = {}
    for (code, agency), c in sorted(counters(store, period, selected, by_agency=True).items()):
        _add(totals, code, c.keys(), c.values())
        if c.get("events") and not catalogue.knows_agency(code, agency):
            unknown.setdefault(code, {})[agency] = c["events"]
    provinces = sorted(set(totals) | set(overdue)) if selected is None else [selected]
    results = []
    for code in provinces:
        c = totals.get(code, {})
        g = lambda key: c.get(key, 0)  # noqa: E731
        results.append({
            "province": code,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "dossiers_received": g("dossiers_received"),
            "dossiers_received_full_online": g("dossiers_received_full_online"),
            "dossiers_received_partial_online": g("dossiers_received_partial_online"),
            "dossiers_completed": g("dossiers_completed"),
            "dossiers_completed_on_time": g("dossiers_completed_on_time"),
            "dossiers_cancelled": g("dossiers_cancelled"),
            "dossiers_overdue_open": overdue.get(code, 0),
            "full_online_rate": rate(g("dossiers_received_full_online"), g("dossiers_received")),
            "on_time_rate": rate(g("dossiers_completed_on_time"), g("dossiers_completed")),
            "payments_total": g("payments_total"),
            "payments_online": g("payments_online"),
            "payments_online_vnd": g("payments_online_vnd"),
            "online_payment_rate": rate(g("payments_online"), g("payments_total")),
            "feedback_received": g("feedback_received"),
            "feedback_resolved": g("feedback_resolved"),
            "feedback_resolved_on_time": g("feedback_resolved_on_time"),
            "feedback_satisfied": g("feedback_satisfied"),
            "documents_sent": g("documents_sent"),
            "documents_received": g("documents_received"),
            "security_alerts": g("security_alerts"),
            "security_alerts_high_or_critical": g("security_alerts_high_or_critical"),
            "security_alerts_blocked": g("security_alerts_blocked"),
            "unknown_agencies": unknown.get(code, {}),
        })
    return results


TABLE_COLUMNS = (
    ("province", "province"), ("received", "dossiers_received"), ("full online", "full_online_rate"),
    ("completed", "dossiers_completed"), ("on time", "on_time_rate"), ("overdue open", "dossiers_overdue_open"),
    ("payments", "payments_total"), ("paid online", "online_payment_rate"),
    ("feedback", "feedback_received"), ("resolved", "feedback_resolved"), ("documents", "documents_sent"),
    ("alerts", "security_alerts"), ("high+", "security_alerts_high_or_critical"),
)


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key.endswith("_rate"):
        return f"{value * 100:.1f}%"
    if key == "documents_sent":
        return str(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_table(results: list[dict]) -> str:
    """A terminal table: one province per row (all keys are in --json)."""
    if not results:
        return "no events in this period"
    header = [title for title, _ in TABLE_COLUMNS]
    rows = [[_cell(key, r[key] if key != "documents_sent" else r["documents_sent"] + r["documents_received"])
             for _, key in TABLE_COLUMNS] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [f"period {results[0]['from']} → {results[0]['to']}"]
    lines.append("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for r in results:
        if r["unknown_agencies"]:
            codes = ", ".join(f"{agency} ({events:,} events)" for agency, events in r["unknown_agencies"].items())
            lines.append(f"{r['province']}: agency codes not in the catalogue: {codes}")
    return "\n".join(lines)
