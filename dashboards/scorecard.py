"""The provincial scorecard: what events can measure of Quyết định 766, against targets.

Per province and per agency, for a period [from, to):
- tiến độ giải quyết (processing on time): the provincial formula
  late = (completed late + overdue open at `to`) / (received in the period + carried over,
  i.e. received before `from` and still open then); the indicator is 1 - late.
  The plain on-time rate of completions (CONTRACT §2) is shown beside it.
- dịch vụ trực tuyến (online service): share of dossiers received fully online
  (toàn trình) and share of payments made online.
- mức độ hài lòng (satisfaction): feedback resolved on time, and resolved to the
  citizen's satisfaction, as shares of feedback resolved.
Each indicator is set beside its target (settings) with met / not met; an
indicator without events has no value and no status.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import NamedTuple

from opscentre.catalogue import Catalogue, default_catalogue
from opscentre.clickhouse import Store

from .kpi import Period, carried_over, counters, overdue_open


class Indicator(NamedTuple):
    key: str
    group: str  # the 766 criterion it belongs to
    title: str
    target_setting: str  # Settings field holding the target


INDICATORS = (
    Indicator("processing_on_time", "tien_do_giai_quyet", "processing on time (provincial formula)", "target_processing_on_time"),
    Indicator("completed_on_time_rate", "tien_do_giai_quyet", "completions on time", "target_on_time"),
    Indicator("full_online_share", "dich_vu_truc_tuyen", "received fully online", "target_full_online"),
    Indicator("online_payment_share", "dich_vu_truc_tuyen", "payments online", "target_online_payment"),
    Indicator("feedback_on_time_share", "muc_do_hai_long", "feedback resolved on time", "target_feedback_on_time"),
    Indicator("satisfied_share", "muc_do_hai_long", "feedback satisfied", "target_satisfied"),
)
COUNTS = ("received", "carried_over", "completed", "completed_late", "overdue_open", "payments", "feedback_resolved")


def _share(numerator: int, denominator: int):
    return None if not denominator else round(numerator / denominator, 4)


def _row(scope: str, province: str, agency: str | None, c: dict, carried: int, overdue: int, settings) -> dict:
    g = lambda key: int(c.get(key, 0))  # noqa: E731
    received, completed = g("dossiers_received"), g("dossiers_completed")
    late = completed - g("dossiers_completed_on_time")
    base = received + carried
    values = {
        "processing_on_time": None if not base else round(1 - (late + overdue) / base, 4),
        "completed_on_time_rate": _share(g("dossiers_completed_on_time"), completed),
        "full_online_share": _share(g("dossiers_received_full_online"), received),
        "online_payment_share": _share(g("payments_online"), g("payments_total")),
        "feedback_on_time_share": _share(g("feedback_resolved_on_time"), g("feedback_resolved")),
        "satisfied_share": _share(g("feedback_satisfied"), g("feedback_resolved")),
    }
    indicators = {}
    for indicator in INDICATORS:
        value = values[indicator.key]
        target = getattr(settings, indicator.target_setting)
        indicators[indicator.key] = {
            "value": value, "target": target, "met": None if value is None else value >= target,
        }
    return {
        "scope": scope, "province": province, "agency": agency,
        "counts": {
            "received": received, "carried_over": carried, "completed": completed, "completed_late": late,
            "overdue_open": overdue, "payments": g("payments_total"), "feedback_resolved": g("feedback_resolved"),
        },
        "indicators": indicators,
    }


def scorecard(store: Store, settings, province: str, start: dt.datetime, end: dt.datetime,
              catalogue: Catalogue | None = None) -> list[dict]:
    """The province's row, then one row per agency (most dossiers first), named from the catalogue
    (`agency_name` None: not in it)."""
    catalogue = catalogue or default_catalogue()
    period = Period(start, end)
    by_agency = counters(store, period, province, by_agency=True)
    totals: dict = {}  # the province is the sum of its agencies
    for counts in by_agency.values():
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    carried = carried_over(store, period.start_ms, province, by_agency=True)
    overdue = overdue_open(store, period.end_ms, province, by_agency=True)
    rows = [_row("province", province, None, totals, sum(carried.values()), sum(overdue.values()), settings)]
    agencies = {agency for _, agency in set(by_agency) | set(carried) | set(overdue)}
    agency_rows = [
        _row("agency", province, agency, by_agency.get((province, agency), {}), carried.get((province, agency), 0),
             overdue.get((province, agency), 0), settings)
        for agency in agencies
    ]
    agency_rows.sort(key=lambda r: (-(r["counts"]["received"] + r["counts"]["carried_over"]), r["agency"]))
    for row in rows + agency_rows:
        row["agency_name"] = catalogue.agency_name(province, row["agency"]) if row["agency"] else None
        row["from"], row["to"] = start.isoformat(), end.isoformat()
    return rows + agency_rows


def _percent(value) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def format_table(rows: list[dict]) -> str:
    first = rows[0]
    lines = [f"scorecard, province {first['province']}, {first['from']} → {first['to']}", ""]
    titles = ["agency", "received", "carried", "late+overdue", "on time*", "completions", "full online",
              "paid online", "fb on time", "satisfied"]
    table = [titles]
    table.append(["target", "", "", ""] + [_percent(first["indicators"][i.key]["target"]) for i in INDICATORS])
    for row in rows:
        c = row["counts"]
        unknown = row["agency"] and row["agency_name"] is None
        cells = [(row["agency"] or "ALL") + ("?" if unknown else ""), f"{c['received']:,}", f"{c['carried_over']:,}",
                 f"{c['completed_late'] + c['overdue_open']:,}"]
        for indicator in INDICATORS:
            value = row["indicators"][indicator.key]
            mark = "" if value["met"] is None else (" ✓" if value["met"] else " ✗")
            cells.append(_percent(value["value"]) + mark)
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(titles))]
    for r in table:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))))
    lines += ["", "* on time = 1 − (completed late + overdue open) / (received + carried over); ✓ met, ✗ not met"]
    if any(row["agency"] and row["agency_name"] is None for row in rows):
        lines.append("? agency code not in the catalogue (OPSCENTRE_CATALOGUE_FILE)")
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["scope", "province", "agency", "agency_name", "from", "to", *COUNTS,
                     *(f"{i.key}{suffix}" for i in INDICATORS for suffix in ("", "_target", "_met"))])
    for row in rows:
        cells = [row["scope"], row["province"], row["agency"] or "", row["agency_name"] or "", row["from"], row["to"]]
        cells += [row["counts"][key] for key in COUNTS]
        for indicator in INDICATORS:
            value = row["indicators"][indicator.key]
            cells += ["" if value["value"] is None else value["value"], value["target"],
                      "" if value["met"] is None else str(value["met"]).lower()]
        writer.writerow(cells)
    return out.getvalue()
