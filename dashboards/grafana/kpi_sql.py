"""The KPI queries of the ClickHouse boards and their alert rules, built on sql.py's exact periods.

ClickHouse 18.16 does not convert UNION ALL branches to a common type (a UInt32 column beside a
UInt64 one reaches the next function as the wrong type): every branch casts each column.

Every query starts with a comment naming it (`-- province.on_time_rate`): the name is stable
across builds and languages, so tests and the read-side benchmark find each panel's query by it
(`queries.board_queries`). The comment is blanked by the plugin before the query runs.

Numbers are those of `opscentre kpi` and `opscentre scorecard` (CONTRACT §2, dashboards/kpi.py,
dashboards/scorecard.py): counts of the period [from, to), "overdue open" at `to`, "carried over"
at `from`, shares as the unrounded double those commands round to 4 decimals.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..drilldown import overdue_list_rows
from . import sql
from .sql import FROM, TO, Measure, share

# The inputs of every KPI, named as the contract names them, with the family each comes from.
SERVICE_INPUTS = {
    "dossiers_received": "dossiers_received",
    "dossiers_received_full_online": "dossiers_received_full_online",
    "dossiers_completed": "dossiers_completed",
    "dossiers_completed_on_time": "dossiers_completed_on_time",
    "payments_total": "payments_total",
    "payments_online": "payments_online",
    "payments_online_vnd": "payments_online_vnd",
    "feedback_received": "feedback_received",
    "feedback_resolved": "feedback_resolved",
    "feedback_resolved_on_time": "feedback_resolved_on_time",
    "feedback_satisfied": "feedback_satisfied",
}
SECURITY_INPUTS = ("security_alerts", "security_alerts_high_or_critical", "security_alerts_blocked")
# Items in an interval at an instant: (interval, at).
INSTANT_INPUTS = {
    "carried_over": ("dossiers_open", FROM),
    "dossiers_overdue_open": ("dossiers_overdue", TO),
    "feedback_overdue_open": ("feedback_overdue", TO),
}
# Bucket (or raw) rows of the period behind a group: a group seen in the period has rows > 0.
ROWS = Measure("rows", "count()", "count()")


def named(name: str, query: str) -> str:
    return f"-- {name}\n{query}"


def inputs(columns: Sequence[str], *, where: str = "", security_where: str | None = None,
           group_by: Sequence[str] = (), start: str = FROM, end: str = TO) -> str:
    """One row per group with the sums of the given inputs (and `rows`) over [start, end), the
    instants at its ends. Security inputs need `security_where` (security rows have no agency)."""
    columns = list(columns)
    branches: list[str] = []
    service = [sql.SERVICE.measures[SERVICE_INPUTS[c]] for c in columns if c in SERVICE_INPUTS]
    if "rows" in columns:
        service.append(ROWS)
    if service:
        branches += sql.period_branches(sql.SERVICE, service, columns=columns, start=start, end=end, where=where,
                                        group_by=group_by)
    security = [sql.SECURITY.measures[c] for c in columns if c in SECURITY_INPUTS]
    if security or ("rows" in columns and security_where is not None):
        if security_where is None:
            raise ValueError("security inputs need security_where")
        if "rows" in columns:
            security.append(ROWS)
        branches += sql.period_branches(sql.SECURITY, security, columns=columns, start=start, end=end,
                                        where=security_where, group_by=group_by)
    for column in columns:
        if column in INSTANT_INPUTS:
            interval, at = INSTANT_INPUTS[column]
            at = {FROM: start, TO: end}[at]
            branches += sql.instant_branches([sql.lifecycle_measure(interval, column)], columns=columns, at=at,
                                             where=where, group_by=group_by)
    return sql.summed(branches, columns, group_by)


def value(name: str, expression: str, columns: Sequence[str], **kwargs) -> str:
    """A stat: one row, one number (`value`), from the inputs."""
    return named(name, f"SELECT {expression} AS value\nFROM (\n{inputs(columns, **kwargs)}\n)")


def count(name: str, column: str, **kwargs) -> str:
    return value(name, column, [column], **kwargs)


def ratio(name: str, numerator: str, denominator: str, **kwargs) -> str:
    return value(name, share(numerator, denominator), [numerator, denominator], **kwargs)


def processing_on_time(received="dossiers_received", completed="dossiers_completed",
                       on_time="dossiers_completed_on_time") -> str:
    """The provincial formula (dashboards/scorecard.py): 1 - (completed late + overdue open at
    `to`) / (received + carried over at `from`)."""
    base = f"({received} + carried_over)"
    return f"if({base} = 0, NULL, 1 - (({completed} - {on_time}) + dossiers_overdue_open) / {base})"


PROCESSING_INPUTS = ("dossiers_received", "dossiers_completed", "dossiers_completed_on_time", "carried_over",
                     "dossiers_overdue_open")


# -- tables ------------------------------------------------------------------------------------------

SCORECARD_INPUTS = ("rows", "dossiers_received", "carried_over", "dossiers_completed", "dossiers_completed_on_time",
                    "dossiers_overdue_open", "dossiers_received_full_online", "payments_total", "payments_online",
                    "feedback_resolved", "feedback_resolved_on_time", "feedback_satisfied")


def scorecard(name: str, where: str, agency_name: str, whole_province: str) -> str:
    """dashboards/scorecard.py as a table: the province's row (agency ''), then its agencies, most
    dossiers (received + carried over) first; an agency is listed if the period has rows of it or
    it has items carried over or overdue."""
    per_agency = inputs(SCORECARD_INPUTS, where=where, group_by=["province", "agency"])
    # sum(x) AS x: nothing in this SELECT refers to x again (an alias would shadow the column).
    totals = ", ".join(f"sum({c}) AS {c}" for c in SCORECARD_INPUTS)
    return named(name, f"""SELECT scope AS agency, if(scope = '', '{whole_province}', {agency_name}) AS agency_name,
       dossiers_received AS received, carried_over, dossiers_completed AS completed,
       dossiers_completed - dossiers_completed_on_time AS completed_late, dossiers_overdue_open AS overdue_open,
       {processing_on_time()} AS processing_on_time,
       {share('dossiers_completed_on_time', 'dossiers_completed')} AS completed_on_time_rate,
       {share('dossiers_received_full_online', 'dossiers_received')} AS full_online_share,
       {share('payments_online', 'payments_total')} AS online_payment_share,
       {share('feedback_resolved_on_time', 'feedback_resolved')} AS feedback_on_time_share,
       {share('feedback_satisfied', 'feedback_resolved')} AS satisfied_share
FROM (
    SELECT province, arrayJoin([agency, '']) AS scope, {totals}
    FROM (
        SELECT * FROM (
{per_agency}
        )
        WHERE rows > 0 OR carried_over != 0 OR dossiers_overdue_open != 0
    )
    GROUP BY province, scope
)
ORDER BY scope != '', received + carried_over DESC, scope""")


def agencies_ranked(name: str, where: str, agency_name: str) -> str:
    """Agencies by on-time rate of completions, lowest first (those with none last)."""
    columns = ("rows", "dossiers_received", "dossiers_completed", "dossiers_completed_on_time", "dossiers_overdue_open")
    rate = share("dossiers_completed_on_time", "dossiers_completed")
    return named(name, f"""SELECT agency, {agency_name} AS agency_name, dossiers_received AS received,
       dossiers_completed AS completed, dossiers_completed_on_time AS completed_on_time, {rate} AS on_time_rate,
       dossiers_overdue_open AS overdue_open
FROM (
{inputs(columns, where=where, group_by=["province", "agency"])}
)
WHERE rows > 0 OR dossiers_overdue_open != 0
ORDER BY dossiers_completed = 0, on_time_rate, overdue_open DESC, agency""")


def feedback_by_agency(name: str, where: str, agency_name: str) -> str:
    columns = ("rows", "feedback_received", "feedback_resolved", "feedback_resolved_on_time", "feedback_satisfied",
               "feedback_overdue_open")
    return named(name, f"""SELECT agency, {agency_name} AS agency_name, feedback_received AS received,
       feedback_resolved AS resolved, {share('feedback_resolved_on_time', 'feedback_resolved')} AS on_time_share,
       {share('feedback_satisfied', 'feedback_resolved')} AS satisfied_share, feedback_overdue_open AS overdue_open
FROM (
{inputs(columns, where=where, group_by=["province", "agency"])}
)
WHERE feedback_received + feedback_resolved != 0 OR feedback_overdue_open != 0
ORDER BY overdue_open DESC, received DESC, agency""")


PROVINCE_INPUTS = ("rows", "dossiers_received", "dossiers_received_full_online", "dossiers_completed",
                   "dossiers_completed_on_time", "payments_total", "payments_online", "feedback_resolved",
                   "feedback_resolved_on_time", "dossiers_overdue_open", "security_alerts_high_or_critical")


def provinces_ranked(name: str, province_name: str) -> str:
    """Every province seen (as `opscentre kpi --province all` lists them) against the targets,
    lowest on-time rate first."""
    return named(name, f"""SELECT province, {province_name} AS province_name, dossiers_received AS received,
       {share('dossiers_received_full_online', 'dossiers_received')} AS full_online_rate,
       {share('dossiers_completed_on_time', 'dossiers_completed')} AS on_time_rate,
       {share('payments_online', 'payments_total')} AS online_payment_rate,
       {share('feedback_resolved_on_time', 'feedback_resolved')} AS feedback_on_time_share,
       dossiers_overdue_open AS overdue_open, security_alerts_high_or_critical AS security_high
FROM (
{inputs(PROVINCE_INPUTS, where="", security_where="", group_by=["province"])}
)
WHERE rows > 0 OR dossiers_overdue_open != 0
ORDER BY dossiers_completed = 0, on_time_rate, province""")


def longest_overdue(name: str, where: str, agency_name: str, procedure_name: str, limit: int = 20) -> str:
    """The dossiers overdue at `to` that have waited longest, from `open_items` (the backlog, not
    the history; the rows of the province or agency asked, as a closing is filed under its item's,
    and the few closings of items the worker did not hold):
    an item with a receipt and no closing before `to`, due before it; its due time, agency and
    procedure from its first receipt. Shown by pseudonym (the alert's item_ref), never
    by dossier id. At `to` = now, `opscentre overdue` (dashboards/drilldown.py) lists the same, in
    the same order."""
    first = "source_offset * 100000 + item_index"
    return named(name, f"""SELECT item_ref, agency, {agency_name} AS agency_name, procedure_code,
       {procedure_name} AS procedure_name, ({TO} * 1000 - due_ms) / 3600000 AS hours_overdue,
       toDateTime(intDiv(due_ms, 1000)) AS due_at
FROM (
    SELECT kind, item_id, argMinIf(due_ms, {first}, NOT closed) AS due_ms,
           argMinIf(province, {first}, NOT closed) AS province, argMinIf(agency, {first}, NOT closed) AS agency,
           argMinIf(procedure_code, {first}, NOT closed) AS procedure_code
    FROM {overdue_list_rows("open_items", "dossier", where)}
    GROUP BY kind, item_id
    HAVING countIf(NOT closed) > 0 AND countIf(closed AND occurred_ms < {TO} * 1000) = 0 AND due_ms < {TO} * 1000
) AS overdue
ANY LEFT JOIN (
    SELECT kind, item_id, any(item_ref) AS item_ref FROM alerts FINAL
    WHERE kind = 'dossier' AND status = 'firing' AND {where} GROUP BY kind, item_id
) AS refs USING (kind, item_id)
ORDER BY due_ms, item_id
LIMIT {limit}""")


PROCEDURE_COLUMNS = ("received_n", "completed_n", "on_time_n", "timed_n", "p50_ms", "p90_ms", "limit_p50_ms",
                     "overdue_n")


def procedures(name: str, where: str, procedure_name: str) -> str:
    """Per procedure over the period: received, completed, on time from the raw events (procedures
    are not a dimension of the counter rows; the read is bounded by the period), overdue open at
    `to` from the lifecycle counts; processing time of completions (receipt to completion, when
    the worker held the receipt) and the legal limit (receipt to due), p50 and p90, in hours."""
    completed = "event_type = 'dossier.completed'"
    timed = f"{completed} AND lc_open_entered_ms > 0"
    took, limit = "toInt64(occurred_ms) - toInt64(lc_open_entered_ms)", \
        "toInt64(lc_overdue_entered_ms) - toInt64(lc_open_entered_ms)"
    raw = {
        "received_n": "countIf(event_type = 'dossier.received')", "completed_n": f"countIf({completed})",
        "on_time_n": f"countIf({completed} AND on_time = 1)", "timed_n": f"countIf({timed})",
        # quantileExact: an element of the set (exact, in ms)
        "p50_ms": f"quantileExactIf(0.5)({took}, {timed})", "p90_ms": f"quantileExactIf(0.9)({took}, {timed})",
        "limit_p50_ms": f"quantileExactIf(0.5)({limit}, {timed})", "overdue_n": "0",
    }
    events = ", ".join(f"toInt64({expression}) AS {column}" for column, expression in raw.items())
    overdue = sql.instant_branches([sql.lifecycle_measure("dossiers_overdue", "overdue_n")],
                                   columns=PROCEDURE_COLUMNS, where=where, group_by=["procedure_code"])
    branches = "\n    UNION ALL\n    ".join(overdue)
    hours = lambda column: f"if(sum(timed_n) = 0, NULL, max({column}) / 3600000)"
    return named(name, f"""SELECT procedure_code, {procedure_name} AS procedure_name, sum(received_n) AS received,
       sum(completed_n) AS completed, sum(on_time_n) AS completed_on_time,
       {share('sum(on_time_n)', 'sum(completed_n)')} AS on_time_rate, sum(overdue_n) AS overdue_open,
       {hours('p50_ms')} AS processing_p50_h, {hours('p90_ms')} AS processing_p90_h,
       {hours('limit_p50_ms')} AS legal_limit_h
FROM (
    SELECT procedure_code, {events}
    FROM service_events FINAL
    WHERE {sql.raw_between(FROM, TO, "service_events")} AND {where}
      AND event_type IN ('dossier.received', 'dossier.completed')
    GROUP BY procedure_code
    UNION ALL
    {branches}
)
GROUP BY procedure_code
HAVING received + completed + overdue_open > 0
ORDER BY received DESC, procedure_code""")


# -- time series ---------------------------------------------------------------------------------------

def _bucket_series(family: str, values: dict[str, str], where: str) -> str:
    """Sums per step of the panel's interval, from minute rows (intervals under an hour) or hour
    rows: cost follows the range. Steps are whole minutes or hours (UTC); the first and last may
    reach outside the range."""
    branches = []
    for grain, span, condition in (("minute", 60, "$__interval_s < 3600"), ("hour", 3600, "$__interval_s >= 3600")):
        step = f"(intDiv($__interval_s + {span - 1}, {span}) * {span})"
        columns = ", ".join(f"toInt64({expression}) AS {alias}" for alias, expression in values.items())
        filters = " AND ".join(c for c in (condition, where) if c)
        branches.append(
            f"SELECT toDateTime(intDiv(toUInt32(window_start), {step}) * {step}) AS time, {columns}\n"
            f"    FROM {family}_{grain} FINAL\n"
            f"    WHERE {sql.window_between(grain, f'intDiv({FROM}, {step}) * {step}', TO)} "
            f"AND {filters}\n    GROUP BY time")
    return "SELECT * FROM (\n    " + "\n    UNION ALL\n    ".join(branches) + "\n)\nORDER BY time"


def bucket_series(name: str, family: str, values: dict[str, str], where: str) -> str:
    return named(name, _bucket_series(family, values, where))


def raw_series(name: str, table: str, values: dict[str, str], where: str) -> str:
    """Sums per step of the panel's interval (at least a minute) from raw rows of the range: for
    the dimensions counter rows lack (channels), bounded by the range."""
    step = "(intDiv($__interval_s + 59, 60) * 60)"
    columns = ", ".join(f"toInt64({expression}) AS {alias}" for alias, expression in values.items())
    return named(name, f"""SELECT toDateTime(intDiv(toUInt32(occurred_at), {step}) * {step}) AS time, {columns}
FROM {table} FINAL
WHERE {sql.raw_between(FROM, TO, table)} AND {where}
GROUP BY time
ORDER BY time""")


def hourly_with_last_week(name: str, where: str, values: dict[str, str]) -> str:
    """Per hour from the hour of `from` to `to`, beside the same hours seven days before (shifted
    onto this week): `<value>` and `<value>_last_week`."""
    week = 7 * 86400
    sums = ", ".join(f"toInt64({expression}) AS {alias}_n" for alias, expression in values.items())
    pick = ", ".join(f"sumIf({alias}_n, week = 0) AS {alias}, sumIf({alias}_n, week = 1) AS {alias}_last_week"
                     for alias in values)
    start = sql.floor_to("hour", FROM)
    return named(name, f"""SELECT toDateTime(hour) AS time, {pick}
FROM (
    SELECT toUInt32(window_start) AS hour, 0 AS week, {sums} FROM service_hour FINAL
    WHERE {sql.window_between("hour", start, TO)} AND {where} GROUP BY hour
    UNION ALL
    SELECT toUInt32(toUInt32(window_start) + {week}) AS hour, 1 AS week, {sums} FROM service_hour FINAL
    WHERE {sql.window_between("hour", f"{start} - {week}", f"{TO} - {week}")} AND {where}
    GROUP BY hour
)
GROUP BY hour
ORDER BY time""")


def backlog(name: str, where: str, intervals: dict[str, str]) -> str:
    """Items in each interval (alias -> dossiers_open, ...) at the end of every hour of the range
    and at `to`: the count at the range's first hour (sql.instant_branches), then each hour's
    transitions summed in order (arrayCumSum), from the hour rows. Hours without transitions
    have no point (the count holds: draw it as steps)."""
    measures = [sql.lifecycle_measure(interval, alias) for alias, interval in intervals.items()]
    aliases = list(intervals)
    start = sql.floor_to("hour", FROM)
    now = sql.floor_to("hour", TO)
    prefix = sql.summed(sql.instant_branches(measures, at=start, where=where), aliases)
    nets = ", ".join(f"toInt64({m.bucket}) AS {m.name}" for m in measures)
    points = ", ".join(aliases)
    elements = ", ".join(f"arrayCumSum(arrayMap(p -> p.{n + 2}, points)) AS {a}_counts" for n, a in enumerate(aliases))
    joined = ", ".join(f"{a}_counts AS {a}" for a in aliases)
    at_now = sql.summed(sql.instant_branches(measures, where=where), aliases)
    return named(name, f"""SELECT time, {points} FROM (
    SELECT toDateTime(hour + 3600) AS time, {points}
    FROM (
        SELECT arrayMap(p -> p.1, points) AS hours, {elements}
        FROM (
            SELECT arraySort(groupArray(tuple(hour, {points}))) AS points
            FROM (
                SELECT toInt64({start}) - 3600 AS hour, {points} FROM (
{prefix}
                )
                UNION ALL
                SELECT toInt64(toUInt32(window_start)) AS hour, {nets} FROM lifecycle_hour FINAL
                WHERE {sql.window_between("hour", start, now)} AND {where}
                GROUP BY hour
            )
        )
    )
    ARRAY JOIN hours AS hour, {joined}
    UNION ALL
    SELECT toDateTime({TO}) AS time, {points} FROM (
{at_now}
    )
)
ORDER BY time""")
