"""Every ClickHouse query of the boards, run as Grafana runs it, on ClickHouse 18.16 and chDB; and
the numbers of the province, agency and national boards (and of the feedback and security boards)
against `opscentre kpi` and `opscentre scorecard`.

Grafana cannot run here: dashboards/macros.py stands in for it (the browser's substitutions, then
the plugin's server macros), tests/board_reader.py for its data source (the board's database as
the default one, read-only, the plugin's max_execution_time).

1. Shapes. Over months of stored events (where tests/test_board_sql.py first checks the SQL
   split of periods and instants against dashboards/kpi.py), each panel and variable query of every board, for
   several ranges (today so far, the last hour, the last 7 days, this month, an unaligned range;
   the panels with a range of their own get theirs) and every value of every variable, All
   included: a time series has a time column first and numbers after it, sorted by time; a stat
   one row of one number; a table the columns its panel shows; a bar gauge a name and a number;
   a variable one or two text columns.
2. The contract. A stream sent through Kafka to a real worker, with duplicates, bad records, a
   worker killed mid-stream and restarted, and events hours late: each stat and table panel for
   several ranges and provinces (every agency of one province, All included) shows what
   `opscentre kpi --json` and `opscentre scorecard --json` print for the same period: counts
   equal, shares the same double those commands round (round(x, 4) equal, and x equal to the
   counts' quotient), the longest-overdue dossiers those of the lifecycle view (and of
   `opscentre overdue` for a range ending now).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dashboards.config import Config
from dashboards.grafana import queries, reference
from dashboards.grafana.common import TIMEZONE
from dashboards.grafana.queries import BoardQuery, board_queries
from dashboards.kpi import Period, counters, kpis, lifecycle_count
from dashboards.macros import Variable, alert_sql
from opscentre.clickhouse import StoreError
from opscentre.settings import Settings
from tests.board_reader import BoardReader

UTC = dt.UTC
LOCAL = ZoneInfo(TIMEZONE)
SETTINGS = Settings()
QUERIES = board_queries(SETTINGS)
PROVINCES = reference.provinces(SETTINGS)


# -- Grafana's ranges and variables ----------------------------------------------------------------

def ranges(now: dt.datetime) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """The board ranges the tests use, as Grafana resolves them in the boards' time zone."""
    local = now.astimezone(LOCAL)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "today so far": (day.astimezone(UTC), now),
        "last hour": (now - dt.timedelta(hours=1), now),
        "last 7 days": (now - dt.timedelta(days=7), now),
        "this month": (day.replace(day=1).astimezone(UTC), now),
        "unaligned": (now - dt.timedelta(days=3, hours=4, minutes=17, seconds=13), now - dt.timedelta(seconds=121)),
    }


def expand(query: BoardQuery, span, variables: dict[str, Variable], now: dt.datetime | None = None) -> str:
    return queries.expand(query, span[0], span[1], variables, now)


def province_values(board: str, codes: list[str]) -> list[dict[str, Variable]]:
    """Every value of the board's province variable (the security board's is multi-valued, with All)."""
    if board == "opscentre-security":
        return [{"province": Variable((code,), codes, multi=True, include_all=True)} for code in codes] + [
            {"province": Variable(tuple(codes[:2]), codes, multi=True, include_all=True)},
            {"province": Variable.all_selected(codes, multi=True)}]
    if board == "opscentre-national":
        return [{}]
    return [{"province": Variable(code, codes)} for code in codes]


def agency_values(reader, queries, codes: list[str], province: str, span) -> list[Variable]:
    variable = next(q for q in queries if q.name == "opscentre-agency.variable.agency")
    agencies = [row[0] for row in reader.rows(expand(variable, span, {"province": Variable(province, codes)}))]
    return [Variable(code, agencies, include_all=True) for code in agencies] + [
        Variable.all_selected(agencies, multi=False)]


# -- shapes ----------------------------------------------------------------------------------------

NUMBER = ("Int", "UInt", "Float", "Nullable(Int", "Nullable(UInt", "Nullable(Float", "Decimal")


def is_number(kind: str) -> bool:
    return kind.startswith(NUMBER)


def check_shape(query: BoardQuery, columns, rows) -> None:
    names = [name for name, _ in columns]
    kinds = dict(columns)
    where = f"{query.name}: {columns}"
    if query.panel == "variable":
        assert 1 <= len(columns) <= 2 and all("String" in kind for kind in kinds.values()), where
    elif query.format == 0:  # a time series
        assert columns and kinds[names[0]].startswith("DateTime") and names[0] == "time", where
        assert all(is_number(kinds[name]) for name in names[1:]) and len(names) > 1, where
        times = [row[0] for row in rows]
        assert times == sorted(times), f"{query.name}: not sorted by time"
    elif query.panel == "stat":
        assert len(rows) == 1 and len(columns) == 1 and is_number(kinds[names[0]]), (where, rows)
    elif query.panel == "table":
        assert set(query.columns) <= set(names), (where, query.columns)
    elif query.panel == "bargauge":
        assert len(columns) == 2 and "String" in kinds[names[0]] and is_number(kinds[names[1]]), where
    else:
        raise AssertionError(f"{query.name}: no shape for a {query.panel} panel")


def run_matrix(url: str, settings: Settings, now: dt.datetime, threads: int = 1) -> int:
    """Every query of the boards built with `settings`, for every range and every variable value;
    returns the number of queries run. Each value runs with one range, the default values with all."""
    queries = board_queries(settings)
    codes = list(reference.provinces(settings))
    readers = [BoardReader(url) for _ in range(threads)]
    board_ranges = list(ranges(now).values())
    jobs = []  # (query, span, variables)
    for board in dict.fromkeys(q.board for q in queries):
        mine = [q for q in queries if q.board == board]
        for n, variables in enumerate(province_values(board, codes)):
            chosen = board_ranges if n == 0 else [board_ranges[n % len(board_ranges)]]
            if board != "opscentre-agency":
                jobs += [(q, span, variables) for span in chosen for q in mine]
                continue
            agencies = agency_values(readers[0], queries, codes, variables["province"].value, chosen[0])
            for m, agency in enumerate(agencies):
                spans = chosen if agency.is_all else [chosen[m % len(chosen)]]
                jobs += [(q, span, {**variables, "agency": agency}) for span in spans for q in mine]

    def run(job, reader):
        query, span, variables = job
        sql = expand(query, span, variables, now)
        try:
            columns, rows = reader.run(sql)
        except StoreError as exc:
            raise AssertionError(f"{query.name} {variables}: {exc}\n{sql}") from None
        check_shape(query, columns, rows)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda n: [run(job, readers[n]) for job in jobs[n::threads]], range(threads)))
    return len(jobs)


MATRIX_NOW = dt.datetime(2026, 10, 21, 1, 5, 27, tzinfo=UTC)  # in the dense traffic of test_board_sql.fill


def matrix_settings(directory: Path) -> Settings:
    """The boards as a centre with this province list would build them: the provinces the events
    have and one without any. Each value of its province variable runs every query of its boards;
    the SQL for the default list's 34 differs only by the code (shapes_on runs two tables for each)."""
    path = directory / "provinces.csv"
    path.write_text("code,name\n01,Hà Nội\n48,Đà Nẵng\n79,Hồ Chí Minh\n46,Huế\n", encoding="utf-8")
    return SETTINGS.with_overrides(provinces_file=str(path))


def shapes_on(url: str, directory: Path, threads: int = 1) -> None:
    from tests import test_board_sql

    test_board_sql.check(url)  # fills the database; the read side's split, in SQL, equals kpi's
    assert run_matrix(url, matrix_settings(directory), MATRIX_NOW, threads) > 500
    seen = [rules_on(url, at) for at in (MATRIX_NOW, MATRIX_NOW + dt.timedelta(days=1))]
    assert all(any(answers[uid] for answers in seen) for uid in seen[0]), seen  # each rule had rows to judge
    # The default list: every province through the heaviest table, and the multi-valued variable.
    reader = BoardReader(url)
    span = ranges(MATRIX_NOW)["last 7 days"]
    sample = [q for q in QUERIES if q.name in ("province.scorecard", "security.top_assets")]
    codes = list(reference.provinces(SETTINGS))
    for code in codes:
        for query in sample:
            values = province_values(query.board, codes)[codes.index(code)]
            columns, rows = reader.run(expand(query, span, values))
            check_shape(query, columns, rows)


def rules_on(url: str, at: dt.datetime) -> dict:
    """The alert rules' queries, expanded with server macros only (no browser step for alert rules),
    give what Grafana alerting needs (text columns for labels, one number) and the read side's
    numbers: the last working day's on-time rate per agency (the scorecard's), the year's
    fully-online share per province (kpi's), the overdue growth (lifecycle counts), the last hour
    against the baseline (counters). With one item enough to judge, so the data has rows."""
    from dashboards.grafana import alert_rules
    from dashboards.scorecard import scorecard
    from opscentre.clickhouse import connect

    store, reader = connect(url), BoardReader(url)
    config = Config.from_settings(SETTINGS.with_overrides(alert_kpi_min_items=1))
    answers = {}
    for rule in alert_rules.rules(config):
        columns, rows = reader.run(alert_sql(rule.sql, time_from=at - dt.timedelta(seconds=rule.lookback_s), time_to=at))
        *labels, (_, kind) = columns
        assert {name for name, _ in labels} <= {"province", "agency"} and all("String" in t for _, t in labels), columns
        assert is_number(kind) and all(row[-1] is not None and math.isfinite(row[-1]) for row in rows), rule.uid
        answers[rule.uid] = {row[:-1]: row[-1] for row in rows}
    local = at.astimezone(LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
    day = local - dt.timedelta(days={0: 3, 6: 2}.get(local.weekday(), 1))
    for province in ("01", "48", "79"):
        for row in scorecard(store, SETTINGS, province, day, day + dt.timedelta(days=1))[1:]:
            c = row["counts"]
            if c["completed"]:
                assert answers["opscentre-agency-on-time"][(province, row["agency"])] == \
                    (c["completed"] - c["completed_late"]) / c["completed"]
    year = local.replace(month=1, day=1)
    for row in kpis(store, "all", year, at):
        if row["dossiers_received"]:
            assert round(answers["opscentre-full-online"][(row["province"],)], 4) == row["full_online_rate"]
    at_ms, window_ms = int(at.timestamp()) * 1000, int(config.overdue_growth_window_s) * 1000
    now = lifecycle_count(store, at_ms, "dossiers_overdue", None, by_agency=True)
    before = lifecycle_count(store, at_ms - window_ms, "dossiers_overdue", None, by_agency=True)
    assert answers["opscentre-overdue-growing"] == {
        key: float(count - before.get(key, 0)) for key, count in now.items() if count > before.get(key, 0)}
    hours = config.security_baseline_days * 24
    recent = counters(store, Period(at - dt.timedelta(hours=1), at), None)
    usual = counters(store, Period(at - dt.timedelta(hours=1 + hours), at - dt.timedelta(hours=1)), None)
    for province, values in recent.items():
        high = values.get("security_alerts_high_or_critical", 0)
        if high:
            limit = max(config.security_min_alerts, config.security_factor
                        * usual.get(province, {}).get("security_alerts_high_or_critical", 0) / hours)
            assert answers["opscentre-security-high"][(province,)] == high / limit
    return answers


def test_periods_in_sql_and_every_board_query_on_clickhouse_18_16_and_chdb(clickhouse_url, tmp_path):
    from opscentre.clickhouse import connect

    assert connect(clickhouse_url).server_version()[:2] == (18, 16)
    # chDB in a child process (one path per process), at the same time: the two do not share a core.
    (tmp_path / "chdb").mkdir()
    chdb = subprocess.Popen([sys.executable, "-m", "tests.test_board_queries", f"chdb://{tmp_path}/ch?database=b",
                             str(tmp_path / "chdb")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        shapes_on(clickhouse_url, tmp_path)
    finally:
        _, errors = chdb.communicate(timeout=600)
    assert chdb.returncode == 0, errors[-4000:]


# -- the contract -----------------------------------------------------------------------------------

def iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def cli(pipeline, *args):
    return subprocess.Popen([sys.executable, "-m", "opscentre.cli", *args], env=pipeline.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def printed(processes: dict) -> dict:
    """What each command printed (one JSON object a line)."""
    results = {}
    for key, process in processes.items():
        out, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors
        results[key] = [json.loads(line) for line in out.splitlines() if line.strip()]
    return results


def same_share(shown, value, numerator: int, denominator: int, what: str) -> None:
    """A panel's share against the contract's: None together, else the same double (the counts'
    quotient) that the command rounds to 4 decimals."""
    if value is None:
        assert shown is None and denominator == 0, (what, shown)
        return
    assert shown == numerator / denominator and round(shown, 4) == value, (what, shown, value)


class Panels:
    """Runs a board's named queries for a range and variables, as Grafana would."""

    def __init__(self, reader, now: dt.datetime):
        self.reader, self.now = reader, now
        self.by_name = {q.name: q for q in QUERIES}

    def rows(self, name: str, span, **variables) -> list[dict]:
        query = self.by_name[name]
        columns, rows = self.reader.run(expand(query, span, variables, self.now))
        check_shape(query, columns, rows)
        return [dict(zip([c for c, _ in columns], row)) for row in rows]

    def value(self, name: str, span, **variables):
        return self.rows(name, span, **variables)[0]["value"]


def overdue_reference(store, province: str, at_ms: int, limit: int = 20) -> list[tuple]:
    """The longest-overdue dossiers from the lifecycle view (all history: a test's reference)."""
    rows = store.query(
        f"SELECT l.dossier_id, l.agency, l.procedure_code, l.due_ms FROM {store.table('dossier_lifecycle')} AS l "
        f"WHERE l.province = '{province}' AND l.received AND l.due_ms < {at_ms} "
        f"AND NOT ((l.completed AND l.completed_ms < {at_ms}) OR (l.cancelled AND l.cancelled_ms < {at_ms}))")
    refs = dict(store.query(f"SELECT item_id, any(item_ref) FROM {store.table('alerts')} FINAL WHERE kind = 'dossier' "
                            "AND status = 'firing' GROUP BY item_id"))
    found = sorted((int(due), item, refs.get(item, ""), agency, procedure) for item, agency, procedure, due in rows)
    return [(ref, agency, procedure, (at_ms - due) / 3_600_000) for due, _, ref, agency, procedure in found[:limit]]


def check_province_board(panels, province, span, kpi, card, last_hour, month_card, store, listed) -> int:
    k = kpi.get(province) or {}
    variables = {"province": Variable(province, list(PROVINCES))}
    get = lambda key: k.get(key, 0)
    assert panels.value("province.received", span, **variables) == get("dossiers_received")
    assert panels.value("province.completed", span, **variables) == get("dossiers_completed")
    assert panels.value("province.overdue_open", span, **variables) == get("dossiers_overdue_open")
    for name, key, numerator, denominator in (
            ("full_online_rate", "full_online_rate", "dossiers_received_full_online", "dossiers_received"),
            ("on_time_rate", "on_time_rate", "dossiers_completed_on_time", "dossiers_completed"),
            ("online_payment_rate", "online_payment_rate", "payments_online", "payments_total")):
        same_share(panels.value(f"province.{name}", span, **variables), k.get(key), get(numerator), get(denominator),
                   name)
    whole = card[0]
    same_share(panels.value("province.feedback_on_time_share", span, **variables),
               whole["indicators"]["feedback_on_time_share"]["value"], get("feedback_resolved_on_time"),
               get("feedback_resolved"), "feedback_on_time_share")
    assert panels.value("province.security_high_last_hour", span, **variables) == \
        (last_hour.get(province) or {}).get("security_alerts_high_or_critical", 0)

    agencies = {row["agency"]: row for row in card[1:]}
    ranked = panels.rows("province.agencies", span, **variables)
    for row in ranked:
        c = agencies[row["agency"]]["counts"]
        assert (row["received"], row["completed"], row["completed_on_time"], row["overdue_open"]) == \
            (c["received"], c["completed"], c["completed"] - c["completed_late"], c["overdue_open"]), row
        same_share(row["on_time_rate"], agencies[row["agency"]]["indicators"]["completed_on_time_rate"]["value"],
                   c["completed"] - c["completed_late"], c["completed"], row["agency"])
        assert row["agency_name"] == (agencies[row["agency"]]["agency_name"] or row["agency"])
    active = {a for a, r in agencies.items() if r["counts"]["received"] or r["counts"]["completed"]
              or r["counts"]["overdue_open"]}
    assert active <= {row["agency"] for row in ranked} <= set(agencies)
    rates = [row["on_time_rate"] for row in ranked if row["completed"]]
    assert rates == sorted(rates)

    shown = panels.rows("province.scorecard", span, **variables)
    assert [row["agency"] or None for row in shown] == [row["agency"] for row in month_card]
    for row, expected in zip(shown, month_card):
        c = expected["counts"]
        assert (row["received"], row["carried_over"], row["completed"], row["completed_late"], row["overdue_open"]) \
            == (c["received"], c["carried_over"], c["completed"], c["completed_late"], c["overdue_open"]), row
        for key, indicator in expected["indicators"].items():
            value = row[key]
            assert (value is None) == (indicator["value"] is None) and (
                value is None or round(value, 4) == indicator["value"]), (row["agency"], key, value, indicator)

    overdue = panels.rows("province.longest_overdue", span, **variables)
    at_ms = int(span[1].timestamp()) * 1000  # overdue at the range's end
    assert [(r["item_ref"], r["agency"], r["procedure_code"], r["hours_overdue"]) for r in overdue] == \
        overdue_reference(store, province, at_ms)
    if listed is not None:  # the range ends now: `opscentre overdue` lists the same, in the same order
        assert [(r["item_ref"] or None, r["agency"], r["procedure_code"], round(r["hours_overdue"], 1))
                for r in overdue] == [(i["item_ref"], i["agency"], i["procedure_code"], i["hours_overdue"])
                                      for i in listed[:len(overdue)]]
    return len(ranked) + len(shown) + len(overdue)


def check_agency_board(panels, province, agencies, span, card, kpi, store, period) -> int:
    rows = {row["agency"]: row for row in card}
    options = [a for a in rows if a]
    by_agency = counters(store, period, province, by_agency=True)
    checked = 0
    for agency in [None, *agencies]:
        variable = Variable.all_selected(options, multi=False) if agency is None else Variable(agency, options,
                                                                                               include_all=True)
        variables = {"province": Variable(province, list(PROVINCES)), "agency": variable}
        row = rows.get(agency) or rows[None]
        c, ind = row["counts"], row["indicators"]
        on_time = c["completed"] - c["completed_late"]
        assert panels.value("agency.received", span, **variables) == c["received"], agency
        assert panels.value("agency.completed", span, **variables) == c["completed"], agency
        assert panels.value("agency.overdue_open", span, **variables) == c["overdue_open"], agency
        same_share(panels.value("agency.on_time_rate", span, **variables), ind["completed_on_time_rate"]["value"],
                   on_time, c["completed"], agency)
        processing = panels.value("agency.processing_on_time", span, **variables)
        assert (processing is None) == (ind["processing_on_time"]["value"] is None) and (
            processing is None or round(processing, 4) == ind["processing_on_time"]["value"]), agency
        counts = (kpi.get(province) or {}) if agency is None else by_agency.get((province, agency), {})
        get = lambda key: counts.get(key, 0)  # noqa: B023
        same_share(panels.value("agency.full_online_rate", span, **variables), ind["full_online_share"]["value"],
                   get("dossiers_received_full_online"), get("dossiers_received"), agency)
        same_share(panels.value("agency.online_payment_rate", span, **variables), ind["online_payment_share"]["value"],
                   get("payments_online"), get("payments_total"), agency)
        assert panels.value("agency.payments_online_vnd", span, **variables) == get("payments_online_vnd")
        procedures = panels.rows("agency.procedures", span, **variables)
        assert sum(p["received"] for p in procedures) == c["received"]
        assert sum(p["completed"] for p in procedures) == c["completed"]
        assert sum(p["completed_on_time"] for p in procedures) == on_time
        assert sum(p["overdue_open"] for p in procedures) == c["overdue_open"]
        channels = panels.rows("agency.channels", span, **variables)
        assert sum(r["dossiers"] for r in channels) == c["received"]
        checked += len(procedures)
    return checked


def check_processing_times(panels, store, province: str, agency: str, span) -> None:
    """p50/p90 of the procedures table against the stored completions, in Python."""
    start, end = (int(t.timestamp()) for t in span)
    rows = store.query(
        f"SELECT procedure_code, occurred_ms - lc_open_entered_ms, lc_overdue_entered_ms - lc_open_entered_ms "
        f"FROM {store.table('service_events')} FINAL WHERE province = '{province}' AND agency = '{agency}' "
        f"AND event_type = 'dossier.completed' AND lc_open_entered_ms > 0 "
        f"AND occurred_at >= toDateTime({start}) AND occurred_at < toDateTime({end})")
    by_procedure: dict = {}
    for procedure, took, limit in rows:
        by_procedure.setdefault(procedure, ([], []))
        by_procedure[procedure][0].append(int(took))
        by_procedure[procedure][1].append(int(limit))
    variables = {"province": Variable(province, list(PROVINCES)), "agency": Variable(agency, [agency])}
    shown = {p["procedure_code"]: p for p in panels.rows("agency.procedures", span, **variables)}
    assert by_procedure, "no completion with its receipt held"
    for procedure, (took, limit) in by_procedure.items():
        # quantileExact: the element at floor(level * n) of the sorted values
        exact = lambda values, level: sorted(values)[min(int(level * len(values)), len(values) - 1)]
        assert shown[procedure]["processing_p50_h"] == exact(took, 0.5) / 3_600_000, procedure
        assert shown[procedure]["processing_p90_h"] == exact(took, 0.9) / 3_600_000, procedure
        assert shown[procedure]["legal_limit_h"] == exact(limit, 0.5) / 3_600_000, procedure


def check_national_board(panels, span, kpi) -> None:
    total = lambda key: sum(row.get(key) or 0 for row in kpi.values())
    assert panels.value("national.received", span) == total("dossiers_received")
    assert panels.value("national.overdue_open", span) == total("dossiers_overdue_open")
    for name, numerator, denominator in (
            ("full_online_rate", "dossiers_received_full_online", "dossiers_received"),
            ("on_time_rate", "dossiers_completed_on_time", "dossiers_completed"),
            ("online_payment_rate", "payments_online", "payments_total"),
            ("feedback_on_time_share", "feedback_resolved_on_time", "feedback_resolved")):
        d = total(denominator)
        same_share(panels.value(f"national.{name}", span), None if not d else round(total(numerator) / d, 4),
                   total(numerator), d, name)
    rows = panels.rows("national.provinces", span)
    assert {row["province"] for row in rows} == set(kpi)
    for row in rows:
        k = kpi[row["province"]]
        assert (row["received"], row["overdue_open"], row["security_high"]) == (
            k["dossiers_received"], k["dossiers_overdue_open"], k["security_alerts_high_or_critical"]), row
        for key, rate, numerator, denominator in (
                ("full_online_rate", "full_online_rate", "dossiers_received_full_online", "dossiers_received"),
                ("on_time_rate", "on_time_rate", "dossiers_completed_on_time", "dossiers_completed"),
                ("online_payment_rate", "online_payment_rate", "payments_online", "payments_total")):
            same_share(row[key], k[rate], k[numerator], k[denominator], (row["province"], key))
        resolved = k["feedback_resolved"]
        same_share(row["feedback_on_time_share"], None if not resolved else round(
            k["feedback_resolved_on_time"] / resolved, 4), k["feedback_resolved_on_time"], resolved, row["province"])
        assert row["province_name"] == PROVINCES[row["province"]]


def check_feedback_and_security(panels, province, span, kpi, card, last_hour, store) -> None:
    k = kpi.get(province) or {}
    get = lambda key: k.get(key, 0)
    one = {"province": Variable(province, list(PROVINCES))}
    assert panels.value("feedback.received", span, **one) == get("feedback_received")
    assert panels.value("feedback.resolved", span, **one) == get("feedback_resolved")
    indicators = card[0]["indicators"]
    same_share(panels.value("feedback.on_time_share", span, **one), indicators["feedback_on_time_share"]["value"],
               get("feedback_resolved_on_time"), get("feedback_resolved"), "feedback on time")
    same_share(panels.value("feedback.satisfied_share", span, **one), indicators["satisfied_share"]["value"],
               get("feedback_satisfied"), get("feedback_resolved"), "satisfied")
    overdue = lifecycle_count(store, int(span[1].timestamp()) * 1000, "feedback_overdue", province).get(province, 0)
    assert panels.value("feedback.overdue_open", span, **one) == overdue
    agencies = panels.rows("feedback.agencies", span, **one)
    assert sum(r["received"] for r in agencies) == get("feedback_received")
    assert sum(r["resolved"] for r in agencies) == get("feedback_resolved")
    assert sum(r["overdue_open"] for r in agencies) == overdue

    many = {"province": Variable((province,), list(PROVINCES), multi=True, include_all=True)}
    assert panels.value("security.alerts", span, **many) == get("security_alerts")
    assert panels.value("security.high_or_critical", span, **many) == get("security_alerts_high_or_critical")
    assert panels.value("security.high_last_hour", span, **many) == \
        (last_hour.get(province) or {}).get("security_alerts_high_or_critical", 0)
    same_share(panels.value("security.blocked_share", span, **many), None if not get("security_alerts") else round(
        get("security_alerts_blocked") / get("security_alerts"), 4), get("security_alerts_blocked"),
               get("security_alerts"), "blocked")
    assert sum(r["security_alerts"] for r in panels.rows("security.by_category", span, **many)) == \
        get("security_alerts")


@pytest.mark.integration
def test_the_boards_show_what_kpi_and_scorecard_print(pipeline):
    from opscentre.kafka import ensure_topics
    from tests.test_exactly_once import send_in_background, settle
    from tests.test_pipeline import stored_events
    from tests.test_read_side import out_of_order, with_closings
    from tests.workload import Workload

    ensure_topics(pipeline.settings)
    start_ms = (int(time.time()) - 50 * 60) // 60 * 60 * 1000 + 17_250
    workload = Workload(seed=61, start_ms=start_ms, events=5000, rate=10.0)  # ~8 minutes of event time
    # closings for a third of the items received: in time, late, before their receipt, sent out of order
    rng = random.Random(6)
    workload.valid = out_of_order(with_closings(workload.valid, rng), rng)
    worker = pipeline.start_worker()
    sender = send_in_background(workload, pipeline.settings, seconds=10)  # duplicates and bad records
    pipeline.wait_for(lambda: stored_events(pipeline) > 1200, what="worker under way")
    worker.stop(signal.SIGKILL)
    pipeline.start_worker()
    sender.join()
    late = Workload(seed=62, start_ms=start_ms, events=400, rate=1.0).valid  # the same minutes, sent late
    workload.send(pipeline.settings, events=late, with_bad=False)
    settle(pipeline, len(workload.unique_valid(late)))

    now = dt.datetime.fromtimestamp(int(time.time()), UTC)
    start = dt.datetime.fromtimestamp(start_ms // 1000, UTC)  # whole seconds, as Grafana gives ranges
    board_ranges = {
        "the stream and before": (start - dt.timedelta(hours=1), now),
        "unaligned": (start + dt.timedelta(seconds=61), start + dt.timedelta(seconds=333)),
        "today so far": ranges(now)["today so far"],
    }
    own = {key: ranges(now)[key] for key in ("last hour", "this month")}
    provinces = ("01", "79")
    processes = {("kpi", key): cli(pipeline, "kpi", "--province", "all", "--from", iso(a), "--to", iso(b), "--json")
                 for key, (a, b) in {**board_ranges, **own}.items()}
    processes |= {("scorecard", p, key): cli(pipeline, "scorecard", "--province", p, "--from", iso(a), "--to", iso(b),
                                             "--json")
                  for p in provinces for key, (a, b) in {**board_ranges, "this month": own["this month"]}.items()}
    processes |= {("overdue", p): cli(pipeline, "overdue", "--province", p, "--at", iso(now), "--json")
                  for p in provinces}
    results = printed(processes)
    overdue_now = {key[1]: rows for key, rows in results.items() if key[0] == "overdue"}
    kpi = {key[1]: {row["province"]: row for row in rows} for key, rows in results.items() if key[0] == "kpi"}
    cards = {key[1:]: rows for key, rows in results.items() if key[0] == "scorecard"}
    assert all(overdue_now.values())

    store = pipeline.store()
    panels = Panels(BoardReader(pipeline.env["OPSCENTRE_CLICKHOUSE"]), now)
    checked = 0
    for key, span in board_ranges.items():
        for province in provinces:
            listed = overdue_now[province] if span[1] == now else None
            checked += check_province_board(panels, province, span, kpi[key], cards[(province, key)],
                                            kpi["last hour"], cards[(province, "this month")], store, listed)
            check_feedback_and_security(panels, province, span, kpi[key], cards[(province, key)], kpi["last hour"],
                                        store)
        card = cards[("01", key)]
        agencies = [row["agency"] for row in card[1:]]
        chosen = agencies if key == "the stream and before" else agencies[:2]
        checked += check_agency_board(panels, "01", chosen, span, card, kpi[key], store, Period(*span))
        check_national_board(panels, span, kpi[key])
    timed = store.query(f"SELECT agency, count() AS n FROM {store.table('service_events')} FINAL WHERE province = '01' "
                        "AND event_type = 'dossier.completed' AND lc_open_entered_ms > 0 GROUP BY agency ORDER BY n DESC")
    check_processing_times(panels, store, "01", timed[0][0], board_ranges["the stream and before"])
    assert checked > 100
    # the stream reached the boards: overdue dossiers, completions late and on time, feedback, alerts
    whole = kpi["the stream and before"]["01"]
    assert whole["dossiers_overdue_open"] and whole["dossiers_completed"] > whole["dossiers_completed_on_time"] > 0
    assert whole["feedback_resolved"] and whole["security_alerts"]


def test_every_query_is_named_and_every_board_reads_clickhouse():
    boards = {q.board for q in QUERIES}
    assert boards == {"opscentre-province", "opscentre-agency", "opscentre-feedback", "opscentre-security",
                      "opscentre-national"}
    for query in QUERIES:
        assert query.name.split(".")[0] in ("province", "agency", "feedback", "security", "national", query.board)
    assert len(QUERIES) == len({q.name for q in QUERIES})


if __name__ == "__main__":
    shapes_on(sys.argv[1], Path(sys.argv[2]))
