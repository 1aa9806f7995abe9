"""The SQL that Grafana's ClickHouse data source sends to ClickHouse for a board's or a rule's query.

Grafana cannot run here, so a test that stands in for it passes a board's query through this
module and runs the result on a real ClickHouse. A query's text goes through up to two steps:

1. The browser, for panels only (`interpolate_variables`): the plugin's
   `Datasource.applyTemplateVariables` (src/data/CHDatasource.ts) calling Grafana's variable
   interpolation (`sceneInterpolator` of @grafana/scenes, as in the dashboards of every Grafana
   the plugin supports, >= 11.6):
   first `$__conditionalAll`, then dashboard variables and Grafana's global variables, then
   `$__adHocFilters(...)`.
2. The plugin's backend, for panels and alert rules (`expand_server_macros`): pkg/macros/macros.go
   on the grafana/macropro engine.

Alert rules get step 2 only (plugin docs alerting.md; Grafana evaluates rules server-side, so no
template variable, `$__conditionalAll` or ad hoc filter is ever applied): `alert_sql`, not
`panel_sql`. `interpolate_variables` and `expand_server_macros` copy the originals, including
what they leave alone: an unknown `$__name` or `$variable` goes through unchanged (so does
ClickHouse's error). `panel_sql` and `alert_sql` add the check the originals lack (strict=True):
anything of that shape left in the final SQL raises, so a typo in a board fails its test.

Sources read (ids in the constants below):
- grafana/clickhouse-datasource v4.20.0 (973c4a50): pkg/macros/macros.go and macros_test.go,
  pkg/plugin/{datasource,driver,settings}.go, src/data/CHDatasource.ts and .test.ts,
  src/data/adHocFilter.ts, src/data/utils.ts, src/components/SqlEditor.tsx, src/types/{sql,
  config,queryBuilder}.ts, src/plugin.json (grafanaDependency >=11.6.0), docs/sources/*.md.
- grafana/macropro v1.0.1 (the plugin's go.mod): parser.go (Interpolate, expand), macropro.go
  (StripComments), defaults.go, parser_test.go. No copy at the v1.0.1 tag could be read:
  parser.go and parser_test.go were read in the revision that has v1.0.1's nested expansion
  (#20) and not v1.0.2's SQLCommenter split, macropro.go at 635503d (v1.0.2), defaults.go in a
  v1.1.0-era revision whose FormatDuration is the one v1.1.0 then replaced (#33).
- grafana/sqlds v5.3.0 (datasource.go, interpolator.go, query.go) and grafana-plugin-sdk-go
  v0.292.2 (data/sqlutil/query.go, backend/convert_from_protobuf.go): the interpolated text is
  what runs, unchanged; the time range arrives in epoch ms, the interval as intervalMs.
- @grafana/scenes at ac1dec6d (stable for this logic since 2024): variables/constants.ts,
  interpolation/{sceneInterpolator,formatRegistry}.ts, macros/{index,timeMacros}.ts,
  variants/MultiValueVariable.ts, querying/SceneQueryRunner.ts; grafana/grafana
  packages/grafana-data/src/datetime/rangeutil.ts (calculateInterval, secondsToHms) and
  pkg/services/ngalert/models/alert_query.go (defaultIntervalMS = 1000).

Server macros at PLUGIN_VERSION (f, t: the range in Unix seconds, floored; F, T: in ms;
n: intervalMs/1000 truncated, at least 1; N: intervalMs, at least 1):

  $__timeFilter(c)          c >= toDateTime(f) AND c <= toDateTime(t)
  $__timeFilter_ms(c)   *   c >= fromUnixTimestamp64Milli(F) AND c <= fromUnixTimestamp64Milli(T)
  $__timeFrom(c)            c >= toDateTime(f)             (exactly one argument)
  $__timeTo(c)              c <= toDateTime(t)             (exactly one argument)
  $__fromTime, $__toTime    toDateTime(f), toDateTime(t)
  $__fromTime_ms        *   fromUnixTimestamp64Milli(F)    ($__toTime_ms likewise)
  $__dateFilter(c)          c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')
  $__dateTimeFilter(d, c)   (d >= toDate(..) AND d <= toDate(..)) AND (c >= toDateTime(f) AND c <= toDateTime(t))
  $__dt(d, c)               the same as $__dateTimeFilter
  $__timeInterval(c)    *   toStartOfInterval(toDateTime(c), INTERVAL n second)
  $__timeInterval_ms(c) *   toStartOfInterval(toDateTime64(c, 3), INTERVAL N millisecond)
  $__timeGroup(c, 5m)   *   toStartOfInterval(toDateTime(c), INTERVAL 300 second)  (Go durations only: no "1d")
  $__interval_s             n
  $__interval, $__interval_ms   macropro: the largest unit that divides it ("90s"), intervalMs;
                            reached only in alert rules (in panels the browser replaces both)
  $__table, $__column       macropro: the query model's "table"/"column" fields, else an error

  * not on ClickHouse 18.16, which lacks toStartOfInterval, toDateTime64, fromUnixTimestamp64Milli
    and a millisecond INTERVAL unit (measured by tests/test_macros.py): boards for 18.16 bucket with
    `intDiv(toUInt32(c), $__interval_s) * $__interval_s` and filter with the others.

Dates are formatted in the time zone of the Grafana server process (the plugin formats a Go
time.Time built by time.Unix, i.e. local time): `server_timezone`, UTC in Grafana's image.
Comments (-- to end of line, /* */) are blanked to spaces before expansion, quotes respected with
ClickHouse's backslash escapes; a query without `$__` is sent untouched, comments included.
Macros are expanded inside string literals too, and inside other macros' arguments
(innermost first, 128 levels at most); a macro's output is never rescanned.

Browser step (panels):
- `$__conditionalAll(cond, $v)` becomes `1=1` when the dashboard variable v has All (or an empty
  value) selected, else `cond`; it reads the variable's state, not its formatted value, and stops
  at the first call that has other than two arguments (commas are not quote-aware).
- `$v`, `${v}`, `[[v]]`: a single value is inserted as it is; a multi-value variable (even with one
  value selected) as `'a','b'` (no escaping); All as the quoted list of every option, or a custom
  all value as it is. `${v:fmt}` and `[[v:fmt]]` use Grafana's formats instead: raw, csv, pipe,
  glob, json, singlequote (\\' escapes), doublequote, sqlstring ('' escapes), text, date.
- Grafana's globals: `$__from`/`$__to` (epoch ms; `${__from:date}` ISO, `:date:seconds` rounded,
  `:date:ms`), `$__interval` (secondsToHms of intervalMs: "1m"), `$__interval_ms`, `$__timezone`.
  `$__range`, `$__range_s`, `$__range_ms` and `$__rate_interval` are not replaced for this data
  source (Grafana: Prometheus and Loki only): they reach ClickHouse as written.
- Ad hoc filters are not modelled: `$__adHocFilters('t')` becomes `additional_table_filters={}`,
  as with no filter set, and no filter is appended. (The plugin turns them off below ClickHouse
  22.7, and refuses a query that has any set there.)

The query model the pinned plugin expects (a panel target; an alert rule's `model` is the same):
  {"refId": "A", "datasource": {"type": "grafana-clickhouse-datasource", "uid": "<uid>"},
   "editorType": "sql", "rawSql": "SELECT ...", "queryType": "table", "format": 1,
   "pluginVersion": "4.20.0"}
  format (sqlutil.FormatQueryOption; the SQL editor derives it from queryType): 0 time series
  ("timeseries"), 1 table ("table"), 2 logs ("logs"), 3 traces ("traces"), 4 multi; the backend
  also accepts those strings (a model without format is a time series query), and reads only
  rawSql, format, fillMode, schema, table, column,
  connectionArgs and meta.timezone (the browser adds meta.timezone: the driver's time zone for
  results, not the SQL). editorType "builder" also sends rawSql, generated in the browser.
  An alert rule's data item: {"refId", "relativeTimeRange": {"from": 600, "to": 0},
  "datasourceUid": "<uid>", "model": {... as above, "intervalMs": 1000, "maxDataPoints": 43200}}.
  Variable queries: a plain SQL string or {"editorType": "sql", "rawSql": ...}; one column gives
  text = value, two give value = first, text = second.

Provisioning (type grafana-clickhouse-datasource; pkg/plugin/settings.go, src/types/config.ts):
  jsonData the backend reads: host (required; v3's "server" still read), port (required, number
  or string), protocol "native" | "http", secure (bool or "true"), path (http only), username,
  defaultDatabase, tlsSkipVerify, tlsAuth, tlsAuthWithCACert, dialTimeout (s, default 10; v3's
  "timeout" still read), queryTimeout (s, default 60), customSettings [{setting, value}] (sent
  with every query), httpHeaders [{name, value, secure}] (http only), forwardGrafanaHeaders,
  enableRowLimit, rowCapacityHint, enableSchemaCache, schemaCacheTTLSeconds.
  connMaxLifetime, maxIdleConns and maxOpenConns are in the type but never read from jsonData:
  the pool is always 5 min / 25 / 50. Read by the browser only: defaultTable, validateSql,
  configMode, signalType, logs{...}, traces{...}, aliasTables, hideTableNameInAdhocFilters,
  enableMapKeysDiscovery, version (the config page writes the plugin version into it).
  secureJsonData: password, tlsCACert, tlsClientCert, tlsClientKey, "secureHttpHeaders.<Name>".
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

PLUGIN_ID = "grafana-clickhouse-datasource"
PLUGIN_VERSION = "4.20.0"
PLUGIN_COMMIT = "973c4a508220c378ef8a477f3133bba935ca2345"
MACROPRO_VERSION = "1.0.1"
SCENES_COMMIT = "ac1dec6d5bb5607fadde0b5561dfad148ff70c4c"

ALL = "$__all"  # the value Grafana stores when All is selected
ALERT_INTERVAL_MS = 1000  # an alert query's intervalMs unless its model sets one (Grafana ngalert)

# Server macros whose SQL ClickHouse 18.16 cannot run, with the function it lacks.
NOT_ON_CLICKHOUSE_18 = {
    "timeFilter_ms": "fromUnixTimestamp64Milli",
    "fromTime_ms": "fromUnixTimestamp64Milli",
    "toTime_ms": "fromUnixTimestamp64Milli",
    "timeInterval": "toStartOfInterval",
    "timeInterval_ms": "toStartOfInterval",  # and toDateTime64, and INTERVAL n millisecond
    "timeGroup": "toStartOfInterval",
}


class MacroError(ValueError):
    """A query Grafana or the plugin rejects, or one that would reach ClickHouse unexpanded."""


class UnknownMacroError(MacroError):
    """A `$__name` nobody expands: it would reach ClickHouse as written."""


class UnresolvedVariableError(MacroError):
    """A `$variable` nobody replaces: it would reach ClickHouse as written."""


# ---------------------------------------------------------------------------------------------
# Step 1: the browser (panels)


@dataclass(frozen=True)
class Variable:
    """A dashboard variable as Grafana holds it: its current value(s) and how it was defined.

    A multi-value variable holds a tuple (Grafana keeps an array even for one selection), any
    other a string. All is selected when the value is ALL (or (ALL,)); it then stands for every
    option, or for all_value when the variable defines a custom all value. Labels are taken to
    be the values.
    """

    value: str | tuple[str, ...]
    options: tuple[str, ...] = ()
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None

    def __post_init__(self):
        if isinstance(self.value, list):
            object.__setattr__(self, "value", tuple(self.value))
        object.__setattr__(self, "options", tuple(self.options))
        if self.multi != isinstance(self.value, tuple):
            raise ValueError("a multi-value variable holds a tuple of values, any other a string")
        if self.is_all and not self.include_all:
            raise ValueError("All is selected on a variable without include_all")

    @classmethod
    def all_selected(cls, options, *, multi: bool = True, all_value: str | None = None) -> Variable:
        return cls((ALL,) if multi else ALL, tuple(options), multi, True, all_value)

    @property
    def is_all(self) -> bool:
        return self.value == ALL or (isinstance(self.value, tuple) and self.value[:1] == (ALL,))


@dataclass(frozen=True)
class _Resolved:
    value: object  # str, int or list of str: what Grafana's formatters receive
    text: str | None  # None: Grafana's text for it (a formatted date) is not modelled
    custom_all: str | None = None


# scenes variables/constants.ts VARIABLE_REGEX: $var, [[var]] / [[var:fmt]], ${var.path:fmt}
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]"
    r"|\$\{(\w+)((?:\.[^:^{}\[\]]+|\[\"[^\"]*\"\]|\['[^']*'\]|\[[^\]\"']*\])*)(?::([^}]+))?\}",
    re.ASCII,
)
_SCOPED = ("__interval", "__interval_ms")  # SceneQueryRunner puts these in the request's scopedVars
_GLOBALS_NOT_MODELLED = {
    "__dashboard", "__user", "__org", "__url", "__url_time_range", "__all_variables",
    "__value", "__data", "__series", "__field", "__name",
}


def interpolate_variables(
    sql: str,
    variables: dict[str, Variable] | None = None,
    *,
    time_from: dt.datetime | None = None,
    time_to: dt.datetime | None = None,
    interval_ms: int | None = None,
    timezone: str = "utc",
) -> str:
    """The browser step: what the panel sends to Grafana's server as rawSql.

    time_from/time_to/interval_ms/timezone feed Grafana's globals ($__from, $__to, $__interval,
    $__interval_ms, $__timezone) and are needed only when the query uses them; timezone is the
    dashboard's ("utc" or an IANA name).
    """
    variables = variables or {}
    sql = apply_conditional_all(sql, variables)
    globals_ = {}
    if time_from is not None and time_to is not None:
        globals_["__from"] = _Resolved(_epoch_ms(time_from), None)
        globals_["__to"] = _Resolved(_epoch_ms(time_to), None)
    if interval_ms is not None:
        globals_["__interval"] = _Resolved(interval_text(interval_ms), interval_text(interval_ms))
        globals_["__interval_ms"] = _Resolved(int(interval_ms), str(int(interval_ms)))
    if timezone == "browser":
        raise ValueError("give the browser's IANA time zone, not 'browser'")
    globals_["__timezone"] = _Resolved(timezone, timezone)
    sql = _replace_variables(sql, variables, globals_, _plugin_format)
    return _AD_HOC_MACRO.sub(_no_ad_hoc_filters, sql)


def apply_conditional_all(sql: str, variables: dict[str, Variable]) -> str:
    """CHDatasource.applyConditionalAll, last call first, with its quirks."""
    macro = "$__conditionalAll("
    index = sql.rfind(macro)
    for _ in range(10_000):  # a query the original loops on forever fails here instead
        if index < 0:
            return sql
        params = _js_macro_args(sql, index + len(macro) - 1)
        if len(params) != 2:
            return sql
        phrase = params[0]
        reference = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", params[1].strip(), re.ASCII)
        if reference:
            variable = variables.get(reference.group(0))
            if variable is not None and _state_text(variable) in ("", ALL):
                phrase = "1=1"
        sql = _js_replace_first(sql, f"{macro}{params[0]},{params[1]})", phrase)
        index = sql.rfind(macro)
    raise MacroError("$__conditionalAll does not terminate (the browser would hang)")


def _js_macro_args(sql: str, open_index: int) -> list[str]:
    # CHDatasource.getMacroArgs: split on commas at depth 1, counting ( and ) only.
    args, depth, last = [], 0, 1
    rest = sql[open_index:]
    for token in re.finditer(r"[(),]", rest):
        depth += {"(": 1, ")": -1}.get(token.group(), 0)
        if token.group() == "," and depth == 1:
            args.append(rest[last : token.end() - 1])
            last = token.end()
        if depth == 0:
            args.append(rest[last : token.end() - 1])
            return args
    return []


def _js_replace_first(text: str, pattern: str, replacement: str) -> str:
    # String.prototype.replace with a string pattern: the first occurrence, and the replacement's
    # $$, $&, $` and $' patterns expanded.
    at = text.find(pattern)
    if at < 0:
        return text
    special = {"$": "$", "&": pattern, "`": text[:at], "'": text[at + len(pattern) :]}
    expanded = re.sub(r"\$([$&`'])", lambda m: special[m.group(1)], replacement)
    return text[:at] + expanded + text[at + len(pattern) :]


def _state_text(variable: Variable) -> str:
    # `current.value.toString()`: an array joins with commas
    return ",".join(variable.value) if isinstance(variable.value, tuple) else variable.value


def _resolve(variable: Variable) -> _Resolved:
    # scenes MultiValueVariable.getValue / getValueText
    if variable.is_all:
        if variable.all_value:
            return _Resolved(None, "All", custom_all=variable.all_value)
        return _Resolved(list(variable.options), "All")
    if isinstance(variable.value, tuple):
        return _Resolved(list(variable.value), " + ".join(variable.value))
    return _Resolved(variable.value, variable.value)


def _replace_variables(sql, variables, globals_, format_fn) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        # scenes order: the request's scoped variables, the dashboard's, then Grafana's macros
        if name in _SCOPED and name in globals_:
            resolved = globals_[name]
        elif name in variables:
            resolved = _resolve(variables[name])
        elif name in globals_:
            resolved = globals_[name]
        elif name in _SCOPED or name in ("__from", "__to"):
            raise MacroError(f"{match.group(0)}: give the time range and interval to resolve Grafana's {name}")
        elif name in _GLOBALS_NOT_MODELLED:
            raise MacroError(f"{match.group(0)}: Grafana's {name} is not modelled")
        else:
            return match.group(0)  # Grafana leaves an unknown variable as written
        if match.group(5):
            raise MacroError(f"{match.group(0)}: variable field paths are not modelled")
        if resolved.custom_all is not None:
            if fmt == "text":
                return "All"
            if fmt in ("percentencode", "queryparam"):
                raise MacroError(f"{match.group(0)}: format {fmt} is not modelled")
            # the custom all value is inserted unformatted, its own variables interpolated
            return _replace_variables(resolved.custom_all, variables, globals_, None)
        if fmt:
            return _grafana_format(resolved, fmt, match.group(0))
        if format_fn is not None:
            return format_fn(resolved.value)
        return _grafana_format(resolved, "glob", match.group(0))

    return _VARIABLE.sub(replace, sql)


def _plugin_format(value) -> str:
    # CHDatasource.format: arrays become 'a','b'; anything else goes in as it is
    if isinstance(value, list):
        return "'" + "','".join(value) + "'"
    return _js_string(value)


def _js_string(value) -> str:
    return ",".join(_js_string(v) for v in value) if isinstance(value, list) else str(value)


def _grafana_format(resolved: _Resolved, fmt: str, reference: str) -> str:
    # scenes formatRegistry, for the formats a ClickHouse query can use
    name, *args = fmt.split(":")
    value = resolved.value
    many = isinstance(value, list)
    if name == "raw":
        return _js_string(value)
    if name == "csv":
        return ",".join(value) if many else _js_string(value)
    if name == "pipe":
        return "|".join(value) if many else _js_string(value)
    if name == "glob":
        return "{" + ",".join(value) + "}" if many and len(value) > 1 else _js_string(value)
    if name == "json":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if name in ("singlequote", "doublequote", "sqlstring"):
        quote = '"' if name == "doublequote" else "'"
        if name == "sqlstring":
            escape = lambda v: v.replace("'", "''").replace('"', '\\"')
        else:
            escape = lambda v: v.replace(quote, "\\" + quote)
        items = value if many else [_js_string(value)]
        return ",".join(f"{quote}{escape(v)}{quote}" for v in items)
    if name == "text" and resolved.text is not None:
        return resolved.text
    if name == "date" and isinstance(value, int):
        kind = args[0] if args else "iso"
        if kind == "ms":
            return str(value)
        if kind == "seconds":
            return str(math.floor(value / 1000 + 0.5))  # Math.round
        if kind == "iso":
            moment = _EPOCH + dt.timedelta(milliseconds=value)
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    raise MacroError(f"{reference}: format {fmt!r} is not modelled (Grafana falls back to glob for unknown names)")


_AD_HOC_MACRO = re.compile(r"\$__adHocFilters\s*\(([^)]+)\)")


def _no_ad_hoc_filters(match: re.Match) -> str:
    # CHDatasource.applyAdHocFiltersMacro with no filter set
    if not re.search(r"['\"]([^'\"]+)['\"]", match.group(1)):
        return match.group(0)
    return "additional_table_filters={}"


def interval_text(interval_ms: float) -> str:
    """Grafana's $__interval for an intervalMs (rangeutil.secondsToHms): 90000 gives "1m"."""
    seconds = interval_ms / 1000
    years = math.floor(seconds / 31536000)
    days = math.floor((seconds % 31536000) / 86400)
    hours = math.floor(((seconds % 31536000) % 86400) / 3600)
    minutes = math.floor((((seconds % 31536000) % 86400) % 3600) / 60)
    whole_seconds = math.floor((((seconds % 31536000) % 86400) % 3600) % 60)
    for count, unit in ((years, "y"), (days, "d"), (hours, "h"), (minutes, "m"), (whole_seconds, "s")):
        if count:
            return f"{count}{unit}"
    milliseconds = math.floor(seconds * 1000.0)
    return f"{milliseconds}ms" if milliseconds else "less than a millisecond"


def panel_interval_ms(time_from: dt.datetime, time_to: dt.datetime, max_data_points: int, min_interval: str | None = None) -> int:
    """The intervalMs Grafana gives a panel (rangeutil.calculateInterval): the range over the
    panel's max data points (its width in pixels unless set), rounded, at least min_interval."""
    low = _interval_to_ms(min_interval) if min_interval else 1
    interval = _round_interval((_epoch_ms(time_to) - _epoch_ms(time_from)) / max_data_points)
    return max(interval, low)


_ROUNDED_INTERVALS = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
    (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
    (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
    (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
    (1814400000, 604800000), (3628800000, 2592000000),
)


def _round_interval(interval: float) -> int:
    for below, rounded in _ROUNDED_INTERVALS:
        if interval < below:
            return rounded
    return 31536000000


def _interval_to_ms(text: str) -> int:
    # rangeutil.intervalToMs: a bare number counts seconds; parseInt drops any fraction
    units = {"y": 31536000, "M": 2592000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    if re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)\s*", text) and float(text):
        return int(float(text)) * 1000
    match = re.match(r"(-?\d+(?:\.\d+)?)(ms|[Mwdhmsy])", text)
    if not match:
        raise MacroError(f"invalid interval {text!r}")
    return round(units[match.group(2)] * 1000 * int(float(match.group(1))))


# ---------------------------------------------------------------------------------------------
# Step 2: the plugin's backend (panels and alert rules)


@dataclass(frozen=True)
class _Context:
    from_ms: int
    to_ms: int
    interval_ms: int
    server_timezone: ZoneInfo
    table: str
    column: str

    def date(self, ms: int) -> str:
        local = (_EPOCH + dt.timedelta(milliseconds=ms)).astimezone(self.server_timezone)
        return f"toDate('{local.year:04d}-{local.month:02d}-{local.day:02d}')"

    def seconds_interval(self) -> int:
        return int(max(self.interval_ms / 1000, 1))


class _EngineError(Exception):
    pass


def _date_time(ms: int) -> str:
    return f"toDateTime({ms // 1000})"  # Go's Time.Unix floors


def _date_time64(ms: int) -> str:
    return f"fromUnixTimestamp64Milli({ms})"


def _arity(name: str, want: int, args: list[str]) -> None:
    if len(args) != want:
        raise _EngineError(f"unexpected number of arguments: $__{name} expected {want} argument(s), received {len(args)}")


def _range_filter(name: str, render: Callable[[_Context, int], str]):
    def macro(ctx: _Context, args: list[str]) -> str:
        _arity(name, 1, args)
        return f"{args[0]} >= {render(ctx, ctx.from_ms)} AND {args[0]} <= {render(ctx, ctx.to_ms)}"

    return macro


def _date_time_filter(ctx: _Context, args: list[str]) -> str:
    _arity("dateTimeFilter", 2, args)
    day, moment = args
    return (
        f"({day} >= {ctx.date(ctx.from_ms)} AND {day} <= {ctx.date(ctx.to_ms)}) AND "
        f"({moment} >= {_date_time(ctx.from_ms)} AND {moment} <= {_date_time(ctx.to_ms)})"
    )


def _bound(name: str, op: str, end: str):
    def macro(ctx: _Context, args: list[str]) -> str:
        _arity(name, 1, args)
        return f"{args[0]} {op} {_date_time(getattr(ctx, end))}"

    return macro


def _time_interval(ctx: _Context, args: list[str]) -> str:
    _arity("timeInterval", 1, args)
    return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {ctx.seconds_interval()} second)"


def _time_interval_ms(ctx: _Context, args: list[str]) -> str:
    _arity("timeInterval_ms", 1, args)
    return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {max(ctx.interval_ms, 1)} millisecond)"


def _time_group(ctx: _Context, args: list[str]) -> str:
    _arity("timeGroup", 2, args)
    period = args[1].strip().strip("'\"")
    try:
        nanoseconds = _go_parse_duration(period)
    except ValueError as exc:
        raise _EngineError(f'$__timeGroup: invalid interval "{period}": {exc}') from None
    seconds = nanoseconds / 1e9
    rounded = math.floor(abs(seconds) + 0.5) * (1 if seconds >= 0 else -1)  # Go math.Round
    if rounded <= 0:
        raise _EngineError(f'$__timeGroup: interval must be positive, got "{period}"')
    return f"toStartOfInterval(toDateTime({args[0].strip()}), INTERVAL {rounded} second)"


def _format_duration(interval_ms: int) -> str:
    # macropro FormatDuration before v1.1.0: the largest unit that divides the interval exactly
    ms = abs(interval_ms)
    if ms == 0:
        return "0s"
    for size, unit in ((3_600_000, "h"), (60_000, "m"), (1000, "s")):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _from_context(field: str):
    def macro(ctx: _Context, args: list[str]) -> str:
        if not getattr(ctx, field):
            raise _EngineError(f"$__{field}: no {field} name in query context")
        return getattr(ctx, field)

    return macro


# pkg/macros/macros.go ClickHouseMacros: macropro.DefaultMacros with the plugin's on top
SERVER_MACROS: dict[str, Callable[[_Context, list[str]], str]] = {
    "interval": lambda ctx, args: _format_duration(ctx.interval_ms),
    "interval_ms": lambda ctx, args: str(ctx.interval_ms),
    "table": _from_context("table"),
    "column": _from_context("column"),
    "timeFilter": _range_filter("timeFilter", lambda ctx, ms: _date_time(ms)),
    "timeFrom": _bound("timeFrom", ">=", "from_ms"),
    "timeTo": _bound("timeTo", "<=", "to_ms"),
    "timeGroup": _time_group,
    "fromTime": lambda ctx, args: _date_time(ctx.from_ms),
    "toTime": lambda ctx, args: _date_time(ctx.to_ms),
    "fromTime_ms": lambda ctx, args: _date_time64(ctx.from_ms),
    "toTime_ms": lambda ctx, args: _date_time64(ctx.to_ms),
    "timeFilter_ms": _range_filter("timeFilter_ms", lambda ctx, ms: _date_time64(ms)),
    "dateFilter": _range_filter("dateFilter", _Context.date),
    "dateTimeFilter": _date_time_filter,
    "dt": _date_time_filter,
    "timeInterval": _time_interval,
    "timeInterval_ms": _time_interval_ms,
    "interval_s": lambda ctx, args: str(ctx.seconds_interval()),
}


_PREFIX = "$__"
_MAX_NESTING = 128
_NAME_CHARS = frozenset("_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def expand_server_macros(
    sql: str,
    time_from: dt.datetime,
    time_to: dt.datetime,
    interval_ms: int,
    *,
    server_timezone: str = "UTC",
    table: str = "",
    column: str = "",
) -> str:
    """The backend step: macros.Interpolate (macropro.Interpolate with the ClickHouse macros and
    comment style). A macro's error raises MacroError with the plugin's message."""
    if _PREFIX not in sql:
        return sql
    work = strip_comments(sql)
    if _PREFIX not in work:
        return work
    ctx = _Context(_epoch_ms(time_from), _epoch_ms(time_to), int(interval_ms), ZoneInfo(server_timezone), table, column)
    try:
        return _expand(work, ctx, 0)
    except _EngineError as exc:
        raise MacroError(f"Could not apply macros: {exc}") from None


def _expand(work: str, ctx: _Context, depth: int) -> str:
    if depth > _MAX_NESTING:
        raise _EngineError(f"macro nesting exceeds {_MAX_NESTING} levels")
    out, i = [], 0
    while i < len(work):
        at = work.find(_PREFIX, i)
        if at < 0:
            out.append(work[i:])
            break
        out.append(work[i:at])
        start = end = at + len(_PREFIX)
        while end < len(work) and work[end] in _NAME_CHARS:
            end += 1
        name = work[start:end]
        macro = SERVER_MACROS.get(name)
        if macro is None:  # no name, or an unknown one: copied, and scanning goes on after it
            out.append(work[at:end])
            i = end
            continue
        raw, after = "", end
        if after < len(work) and work[after] == "(":
            close = _closing_paren(work, after)
            if close is not None:
                raw, after = work[after + 1 : close], close + 1
        try:
            args = _parse_args(raw)
        except _EngineError as exc:
            raise _EngineError(f"macro $__{name}: {exc}") from None
        for position, arg in enumerate(args):
            if _PREFIX in arg:
                try:
                    args[position] = _expand(arg, ctx, depth + 1)
                except _EngineError as exc:
                    raise _EngineError(f"macro $__{name} argument {position + 1}: {exc}") from None
        try:
            out.append(macro(ctx, args))
        except _EngineError as exc:
            raise _EngineError(f"macro $__{name}({', '.join(args)}): {exc}") from None
        i = after
    return "".join(out)


def strip_comments(sql: str) -> str:
    """macropro.StripComments with LineComment|BlockComment|BackslashEscape: comments become as
    many spaces as they have bytes; quoted text (with \\ escapes) is kept."""
    if "-" not in sql and "/" not in sql:
        return sql
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = _scan_literal(sql, i, backslash=True)
            out.append(sql[i:j])
        elif c == "-" and sql.startswith("-", i + 1):
            j = i
            while j < n and sql[j] not in "\r\n":
                j += 1
            out.append(" " * len(sql[i:j].encode()))
        elif c == "/" and sql.startswith("*", i + 1):
            close = sql.find("*/", i + 2)
            j = n if close < 0 else close + 2
            out.append(" " * len(sql[i:j].encode()))
        else:
            j = i + 1
            out.append(c)
        i = j
    return "".join(out)


def _scan_literal(s: str, pos: int, backslash: bool = False) -> int:
    quote, j = s[pos], pos + 1
    while j < len(s):
        if backslash and s[j] == "\\" and j + 1 < len(s):
            j += 2
            continue
        if s[j] == quote:
            if j + 1 < len(s) and s[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return j


def _closing_paren(s: str, open_at: int) -> int | None:
    depth, i = 0, open_at
    while i < len(s):
        if s[i] in "'\"":
            i = _scan_literal(s, i)
            continue
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _parse_args(raw: str) -> list[str]:
    raw = raw.strip()
    if not raw:
        return []
    args, depth, start, i = [], 0, 0, 0
    while i < len(raw):
        c = raw[i]
        if c in "'\"":
            i = _scan_literal(raw, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                raise _EngineError(f"unexpected ')' at position {len(raw[:i].encode())}")
            depth -= 1
        elif c == "," and depth == 0:
            args.append(raw[start:i].strip())
            start = i + 1
        i += 1
    if depth != 0:
        raise _EngineError("unbalanced parentheses in arguments")
    args.append(raw[start:].strip())
    return args


_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def _go_parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds (the units ns..h, decimals, "1h30m")."""
    invalid = ValueError(f'time: invalid duration "{text}"')
    s, negative = text, False
    if s[:1] in ("-", "+"):
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        number = re.match(r"(\d*)(?:\.(\d*))?", s)
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise invalid
        s = s[number.end() :]
        unit = re.match(r"[^.0-9]*", s).group()
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _GO_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        s = s[len(unit) :]
        total += int(whole or 0) * _GO_UNITS[unit]
        if fraction and int(fraction):
            total += int(int(fraction) * (_GO_UNITS[unit] / 10 ** len(fraction)))
    if total > 2**63 - 1:
        raise invalid
    return -total if negative else total


# ---------------------------------------------------------------------------------------------
# Both steps, in the order Grafana runs them


def panel_sql(
    raw_sql: str,
    *,
    time_from: dt.datetime,
    time_to: dt.datetime,
    interval_ms: int,
    variables: dict[str, Variable] | None = None,
    timezone: str = "utc",
    server_timezone: str = "UTC",
    strict: bool = True,
) -> str:
    """What ClickHouse receives for a panel's rawSql: the browser step, then the backend's."""
    sent = interpolate_variables(
        raw_sql, variables, time_from=time_from, time_to=time_to, interval_ms=interval_ms, timezone=timezone
    )
    sql = expand_server_macros(sent, time_from, time_to, interval_ms, server_timezone=server_timezone)
    if strict:
        _check_expanded(sql, alert=False)
    return sql


def alert_sql(
    raw_sql: str,
    *,
    time_from: dt.datetime,
    time_to: dt.datetime,
    interval_ms: int = ALERT_INTERVAL_MS,
    server_timezone: str = "UTC",
    strict: bool = True,
) -> str:
    """What ClickHouse receives for an alert rule's rawSql: the backend step only. The range is
    the rule's relativeTimeRange before its evaluation time."""
    sql = expand_server_macros(raw_sql, time_from, time_to, interval_ms, server_timezone=server_timezone)
    if strict:
        _check_expanded(sql, alert=True)
    return sql


_HINTS = {
    "conditionalAll": "it is applied in the browser, which alert rules do not have",
    "adHocFilters": "it is applied in the browser, which alert rules do not have",
    "range": "Grafana replaces $__range* only for Prometheus and Loki",
    "range_s": "Grafana replaces $__range* only for Prometheus and Loki",
    "range_ms": "Grafana replaces $__range* only for Prometheus and Loki",
    "rate_interval": "Grafana replaces it only for Prometheus",
}


def _check_expanded(sql: str, *, alert: bool) -> None:
    visible = strip_comments(sql)
    leftover = re.search(r"\$__(\w+)", visible, re.ASCII)
    if leftover:
        hint = _HINTS.get(leftover.group(1), f"not a macro of {PLUGIN_ID} {PLUGIN_VERSION}")
        raise UnknownMacroError(f"{leftover.group(0)} would reach ClickHouse as written: {hint}")
    reference = _VARIABLE.search(visible)
    if reference:
        why = "alert rules get no template variables" if alert else "no such dashboard variable"
        raise UnresolvedVariableError(f"{reference.group(0)} would reach ClickHouse as written: {why}")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _epoch_ms(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("time range ends must be timezone-aware datetimes")
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)
