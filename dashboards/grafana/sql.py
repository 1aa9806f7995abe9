"""The read side's exact periods and instants, written in SQL from Grafana's time macros.

`dashboards.kpi` splits a period [from, to) in Python: the fewest whole buckets of the
per-partition tables (months in the middle, then days, hours and minutes towards each end) and
the partial minutes at either end from the raw events. A board's query cannot run Python, so
this module writes the same split as SQL over `$__fromTime` and `$__toTime`, which the ClickHouse
plugin's backend expands to `toDateTime(<unix seconds>)` (dashboards/macros.py):

- every minute of the period is read once, at the coarsest grain whose whole bucket lies in the
  period: the rows of grain g whose bucket starts in [ceil_g(from), floor_g(to)), less those in
  the next grain's range [ceil_g+1(from), floor_g+1(to)) when that range is not empty. (A whole
  g-bucket inside [from, to) is one inside [ceil_minute(from), floor_minute(to)), and the
  boundaries of a coarser grain are boundaries of every finer one, so this is kpi's split.)
- the raw events of [from, to) outside [ceil_minute(from), floor_minute(to)) are the partial
  minutes; when no whole minute lies inside, the whole period is raw. Grafana gives whole
  seconds, so `occurred_at` (seconds) selects them exactly.

"Open at t" and "overdue open at t" (kpi.lifecycle_count) are the same split of [0, t): the
bucket rows since 1970 (a year is about twelve month rows) and the `lifecycle_edges` of t's
partial minute.

Buckets are UTC (month buckets start on the 1st at 00:00 UTC): minute, hour and day bounds are
integer arithmetic on Unix seconds, month bounds go through a DateTime('UTC'), so the server's
time zone never enters. Every function returns SQL text for ClickHouse 18.16 and current
releases (chDB): no WITH across subqueries, no toStartOfInterval, measures cast to Int64 so that
UNION ALL branches agree on types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opscentre.measures import SERVICE_COUNTERS
from sinks.clickhouse_sink import GRAINS as SINK_GRAINS
from sinks.clickhouse_sink import RAW_KEYS, raw_rows_between

from ..kpi import BUCKET_SECURITY, RAW_SECURITY, RAW_SERVICE, SECURITY_KEYS

FROM = "toUInt32($__fromTime)"
TO = "toUInt32($__toTime)"
GRAINS = ("minute", "hour", "day", "month")
_SPANS = {"minute": 60, "hour": 3600, "day": 86400}


def floor_to(grain: str, seconds: str) -> str:
    """The start (Unix s) of the `grain` bucket holding the instant `seconds` (an SQL expression)."""
    if grain == "month":
        return f"toUInt32(toStartOfMonth(toDateTime({seconds}, 'UTC'))) * 86400"
    span = _SPANS[grain]
    return f"intDiv({seconds}, {span}) * {span}"


def ceil_to(grain: str, seconds: str) -> str:
    """The first `grain` boundary at or after `seconds`."""
    if grain == "month":
        floor = floor_to("month", seconds)
        # toUInt64: `seconds` may be a signed difference ($__toTime - 3600); if() needs one type
        return (f"if({floor} = {seconds}, toUInt64({seconds}), "
                f"toUInt32(addMonths(toStartOfMonth(toDateTime({seconds}, 'UTC')), 1)) * 86400)")
    span = _SPANS[grain]
    return f"intDiv({seconds} + {span - 1}, {span}) * {span}"


def _between(column: str, low: str | None, high: str) -> str:
    upper = f"{column} < toDateTime({high})"
    return upper if low is None else f"{column} >= toDateTime({low}) AND {upper}"


def bucket_range(grain: str, start: str | None, end: str) -> str:
    """The rows of `grain` (window_start) that a split of [start, end) reads at that grain;
    start None is 1970. Below months they lie in at most two buckets of the next grain, the ones
    holding the first and the last row: the sorting key's leading bucket (KeyBucket) names them."""
    index = GRAINS.index(grain)
    own = _between("window_start", None if start is None else ceil_to(grain, start), floor_to(grain, end))
    if index + 1 == len(GRAINS):
        return own
    coarser = GRAINS[index + 1]
    taken = _between("window_start", None if start is None else ceil_to(coarser, start), floor_to(coarser, end))
    last = f"{floor_to(grain, end)} - {_SPANS[grain]}"
    keyed = SINK_GRAINS[index].key.any_of(*([last] if start is None else [ceil_to(grain, start), last]))
    return f"{keyed} AND {own} AND NOT ({taken})"


def window_between(grain: str, start: str, end: str) -> str:
    """The rows of `grain` whose window starts in [start, end) (whole seconds)."""
    return SINK_GRAINS[GRAINS.index(grain)].windows_between(start, end)


def raw_range(start: str, end: str, table: str, column: str = "occurred_at") -> str:
    """The raw rows of [start, end) (whole seconds) outside its whole minutes: in the hour of
    `start` or of the last second."""
    whole = _between(column, ceil_to("minute", start), floor_to("minute", end))
    return (f"{RAW_KEYS[table].any_of(f'{start} * 1000', f'({end} - 1) * 1000')} AND {_between(column, start, end)} "
            f"AND NOT ({whole})")


def raw_between(start: str, end: str, table: str) -> str:
    """The raw rows of [start, end) (whole seconds)."""
    return raw_rows_between(table, start, end, unit="s")


@dataclass(frozen=True)
class Measure:
    """A number summed over a period: its expression over bucket rows and over raw rows."""

    name: str
    bucket: str
    raw: str


@dataclass(frozen=True)
class Family:
    """Per-partition counter tables `<prefix>_<grain>` and the raw table of their partial minutes."""

    prefix: str
    raw_table: str
    measures: Mapping[str, Measure]


SERVICE = Family("service", "service_events", {
    name: Measure(name, f"sum({name})", RAW_SERVICE[name]) for name in SERVICE_COUNTERS})
SECURITY = Family("security", "security_events", {
    name: Measure(name, bucket, raw) for name, bucket, raw in zip(SECURITY_KEYS, BUCKET_SECURITY, RAW_SECURITY)})

_INTERVALS = {"dossiers_open": ("dossier", "open"), "dossiers_overdue": ("dossier", "overdue"),
              "feedback_open": ("feedback", "open"), "feedback_overdue": ("feedback", "overdue")}


def lifecycle_measure(interval: str, name: str | None = None) -> Measure:
    """Items in an interval (dossiers_open, dossiers_overdue, feedback_open, feedback_overdue):
    transitions entered less left."""
    kind, family = _INTERVALS[interval]
    edge = f"kind = '{kind}' AND family = '{family}' AND direction"
    return Measure(name or interval, f"sum({interval}_entered) - sum({interval}_left)",
                   f"sumIf(weight, {edge} = 'entered') - sumIf(weight, {edge} = 'left')")


def _and(*conditions: str) -> str:
    return " AND ".join(f"({c})" if " OR " in c else c for c in conditions if c)


def _select(group_by: Sequence[str], values: Sequence[str], table: str, where: str) -> str:
    columns = ", ".join([*group_by, *values])
    grouping = f" GROUP BY {', '.join(group_by)}" if group_by else ""
    return f"SELECT {columns} FROM {table} FINAL WHERE {where}{grouping}"


def _values(measures: Sequence[Measure], columns: Sequence[str], side: str) -> list[str]:
    given = {m.name: getattr(m, side) for m in measures}
    # ifNull: an aggregate over a Nullable column (satisfied) is NULL when it saw no row.
    return [f"toInt64(ifNull({given[c]}, 0)) AS {c}" if c in given else f"toInt64(0) AS {c}" for c in columns]


def period_branches(family: Family, measures: Sequence[str | Measure], *, columns: Sequence[str] | None = None,
                    start: str = FROM, end: str = TO, where: str = "", group_by: Sequence[str] = ()) -> list[str]:
    """SELECTs whose rows, summed, give each measure over [start, end) exactly: one per grain and
    one for the raw edges. `columns` (default: the measures) are the columns every branch has,
    in order, 0 where a measure is not this family's."""
    chosen = [family.measures[m] if isinstance(m, str) else m for m in measures]
    columns = [m.name for m in chosen] if columns is None else list(columns)
    branches = [_select(group_by, _values(chosen, columns, "bucket"), f"{family.prefix}_{grain}",
                        _and(bucket_range(grain, start, end), where)) for grain in GRAINS]
    branches.append(_select(group_by, _values(chosen, columns, "raw"), family.raw_table,
                            _and(raw_range(start, end, family.raw_table), where)))
    return branches


def instant_branches(measures: Sequence[Measure], *, columns: Sequence[str] | None = None, at: str = TO,
                     where: str = "", group_by: Sequence[str] = ()) -> list[str]:
    """SELECTs whose rows, summed, give each lifecycle measure at the instant `at` (whole seconds):
    the bucket rows of [0, floor_minute(at)) and the edges of the partial minute."""
    columns = [m.name for m in measures] if columns is None else list(columns)
    branches = [_select(group_by, _values(measures, columns, "bucket"), f"lifecycle_{grain}",
                        _and(bucket_range(grain, None, at), where)) for grain in GRAINS]
    minute = floor_to("minute", at)
    branches.append(_select(group_by, _values(measures, columns, "raw"), "lifecycle_edges",
                            _and(f"{RAW_KEYS['lifecycle_edges'].any_of(f'{minute} * 1000')} "
                                 f"AND at_ms >= {minute} * 1000 AND at_ms < {at} * 1000", where)))
    return branches


def summed(branches: Sequence[str], columns: Sequence[str], group_by: Sequence[str] = ()) -> str:
    """The branches' rows summed per group: one row per group (one row in all without groups)."""
    inner = "\n    UNION ALL\n    ".join(branches)
    values = ", ".join([*group_by, *(f"sum({c}) AS {c}" for c in columns)])
    grouping = f"\nGROUP BY {', '.join(group_by)}" if group_by else ""
    return f"SELECT {values}\nFROM (\n    {inner}\n){grouping}"


def period_sum(family: Family, measures: Sequence[str | Measure], **kwargs) -> str:
    """Each measure over [start, end) (default the panel's range), one row per group."""
    names = [m if isinstance(m, str) else m.name for m in measures]
    return summed(period_branches(family, measures, **kwargs), names, kwargs.get("group_by", ()))


def instant_sum(measures: Sequence[Measure], **kwargs) -> str:
    """Each lifecycle measure at `at` (default the range's end), one row per group."""
    return summed(instant_branches(measures, **kwargs), [m.name for m in measures], kwargs.get("group_by", ()))


def share(numerator: str, denominator: str) -> str:
    """numerator / denominator, NULL when the denominator is 0. Not rounded: the double is the one
    `opscentre kpi` rounds to 4 decimals, and the wall shows it with its own decimals."""
    return f"if({denominator} = 0, NULL, {numerator} / {denominator})"
