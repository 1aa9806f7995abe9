"""dashboards.macros against the pinned sources' own tests, then on ClickHouse 18.16 and chDB.

Expected strings are transcribed from grafana/clickhouse-datasource v4.20.0
(pkg/macros/macros_test.go, src/data/CHDatasource.test.ts), grafana/macropro (parser_test.go,
its cases rewritten with the ClickHouse macros) and @grafana/scenes (formatRegistry.test.ts,
sceneInterpolator.test.ts). Cases marked "from the code" follow the source where no test pins it.
Grafana cannot run here: these tests stand in for it.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from dashboards.macros import (
    ALL,
    NOT_ON_CLICKHOUSE_18,
    PLUGIN_VERSION,
    MacroError,
    UnknownMacroError,
    UnresolvedVariableError,
    Variable,
    alert_sql,
    apply_conditional_all,
    expand_server_macros,
    interpolate_variables,
    interval_text,
    panel_interval_ms,
    panel_sql,
    strip_comments,
)
from opscentre.clickhouse import StoreError, connect, quote

UTC = dt.timezone.utc
# macros_test.go TestMacro*: 2014-11-12T11:45:26.371Z to 2015-11-12T11:45:26.371Z
FROM_371 = dt.datetime(2014, 11, 12, 11, 45, 26, 371000, tzinfo=UTC)
TO_371 = dt.datetime(2015, 11, 12, 11, 45, 26, 371000, tzinfo=UTC)
# macros_test.go TestInterpolate*: .123 to .456
FROM = dt.datetime(2014, 11, 12, 11, 45, 26, 123000, tzinfo=UTC)
TO = dt.datetime(2015, 11, 12, 11, 45, 26, 456000, tzinfo=UTC)
F, T = "toDateTime(1415792726)", "toDateTime(1447328726)"


def backend(sql: str, interval_ms: int = 0, time_from=FROM, time_to=TO) -> str:
    return expand_server_macros(sql, time_from, time_to, interval_ms)


def test_the_pinned_version():
    assert PLUGIN_VERSION == "4.20.0"


# --- pkg/macros/macros_test.go ----------------------------------------------------------------

@pytest.mark.parametrize(("sql", "interval_ms", "expected"), [
    ("$__fromTime", 0, "toDateTime(1415792726)"),
    ("$__toTime", 0, "toDateTime(1447328726)"),
    ("$__fromTime_ms", 0, "fromUnixTimestamp64Milli(1415792726371)"),
    ("$__toTime_ms", 0, "fromUnixTimestamp64Milli(1447328726371)"),
    ("$__dateFilter(dateCol)", 0, "dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')"),
    ("$__dateTimeFilter(dateCol, timeCol)", 0,
     ("(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
     "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))")),
    ("$__dt(dateCol, timeCol)", 0,
     ("(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
     "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))")),
    ("$__timeInterval(col)", 20000, "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"),
    ("$__timeInterval_ms(col)", 20000, "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond)"),
    ("$__interval_s", 20000, "20"),
    ("$__timeFrom(ts)", 0, "ts >= toDateTime(1415792726)"),
    ("$__timeTo(ts)", 0, "ts <= toDateTime(1447328726)"),
    ("$__timeGroup(ts, 5m)", 0, "toStartOfInterval(toDateTime(ts), INTERVAL 300 second)"),
    ("$__timeGroup(ts, 1h)", 0, "toStartOfInterval(toDateTime(ts), INTERVAL 3600 second)"),
])
def test_each_macro(sql, interval_ms, expected):
    assert backend(sql, interval_ms, FROM_371, TO_371) == expected


@pytest.mark.parametrize("sql", [
    "$__timeFilter", "$__timeFilter_ms()", "$__dateFilter()", "$__dateTimeFilter(d)", "$__timeInterval()",
    "$__timeInterval_ms()", "$__timeFrom()", "$__timeTo()", "$__timeGroup(ts)", "$__timeGroup(ts, nope)",
    "$__timeGroup(ts, not-a-duration)",
])
def test_bad_arguments_are_the_plugins_errors(sql):
    with pytest.raises(MacroError, match="^Could not apply macros: macro "):
        backend(sql)


def test_the_argument_count_error_text():
    with pytest.raises(MacroError) as raised:
        backend("$__timeFilter()")
    assert str(raised.value) == ("Could not apply macros: macro $__timeFilter(): unexpected number of arguments: "
                                 "$__timeFilter expected 1 argument(s), received 0")


@pytest.mark.parametrize(("sql", "expected"), [  # TestInterpolate
    ("select * from foo where $__timeFilter(cast(sth as timestamp))",
     f"select * from foo where cast(sth as timestamp) >= {F} AND cast(sth as timestamp) <= {T}"),
    ("select * from foo where $__timeFilter(cast(sth as timestamp) )",
     f"select * from foo where cast(sth as timestamp) >= {F} AND cast(sth as timestamp) <= {T}"),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
     ("select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) AND "
     "cast(sth as timestamp) <= fromUnixTimestamp64Milli(1447328726456)")),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp) )",
     ("select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) AND "
     "cast(sth as timestamp) <= fromUnixTimestamp64Milli(1447328726456)")),
    ("select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
     f"select * from foo where ( date >= {F} and date <= {T} ) limit 100"),
    ("select * from foo where ( date >= $__fromTime ) and ( date <= $__toTime ) limit 100",
     f"select * from foo where ( date >= {F} ) and ( date <= {T} ) limit 100"),
    ("select * from foo where ( date >= $__fromTime_ms and date <= $__toTime_ms ) limit 100",
     ("select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) and "
     "date <= fromUnixTimestamp64Milli(1447328726456) ) limit 100")),
    ("select * from foo where ( date >= $__fromTime_ms ) and ( date <= $__toTime_ms ) limit 100",
     ("select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) ) and "
     "( date <= fromUnixTimestamp64Milli(1447328726456) ) limit 100")),
])
def test_interpolate(sql, expected):
    assert backend(sql) == expected


@pytest.mark.parametrize(("sql", "expected"), [  # TestInterpolateNestedMacros, interval 1 minute
    ("SELECT $__timeInterval($__fromTime) AS from_time",
     f"SELECT toStartOfInterval(toDateTime({F}), INTERVAL 60 second) AS from_time"),
    ("SELECT $__timeInterval_ms($__fromTime_ms)",
     "SELECT toStartOfInterval(toDateTime64(fromUnixTimestamp64Milli(1415792726123), 3), INTERVAL 60000 millisecond)"),
    ("select * from foo where $__timeFilter(coalesce(closed_at, $__toTime))",
     f"select * from foo where coalesce(closed_at, {T}) >= {F} AND coalesce(closed_at, {T}) <= {T}"),
])
def test_nested_macros(sql, expected):
    assert backend(sql, 60_000) == expected


@pytest.mark.parametrize(("sql", "expected"), [  # TestInterpolateBackslashEscapedStringLiterals
    (r"select * from foo where msg = 'it\'s -- fine' and $__fromTime", rf"select * from foo where msg = 'it\'s -- fine' and {F}"),
    (r"select * from foo where msg = 'a\'/*x' and $__toTime", rf"select * from foo where msg = 'a\'/*x' and {T}"),
    ("select * from foo where msg = 'it''s' and $__fromTime", f"select * from foo where msg = 'it''s' and {F}"),
])
def test_backslash_escaped_string_literals(sql, expected):
    assert backend(sql) == expected


# --- the macropro engine (parser_test.go, with the ClickHouse macros) -------------------------

@pytest.mark.parametrize(("sql", "expected"), [
    ("$__fromTime and $__unknown(x, y)", f"{F} and $__unknown(x, y)"),  # unknownMacroUnchanged
    ("$__unknown($__fromTime)", f"$__unknown({F})"),  # knownMacroInsideUnknownMacroArgs
    ("$__timeFrom($__unknown($__toTime))", f"$__unknown({T}) >= {F}"),
    ("$__timeFrom($__unknown)", f"$__unknown >= {F}"),  # nestedUnknownMacroPassedThrough
    ("$__interval_s + $__interval_s + $__interval_s", "1 + 1 + 1"),  # multipleOccurrences
    ("$__fromTime()", F),  # zeroArgWithParens
    ("$__timeFrom($__timeInterval(ts))",  # nestedExpansionDoesNotChangeArity
     f"toStartOfInterval(toDateTime(ts), INTERVAL 1 second) >= {F}"),
    ("$__timeFrom('a $__fromTime b')", f"'a {F} b' >= {F}"),  # nestedInsideStringLiteralArg
    ("SELECT '$__fromTime'", f"SELECT '{F}'"),  # the top-level scanner expands inside literals too
    ("SELECT $__timeFrom('it''s, still one arg') FROM t", f"SELECT 'it''s, still one arg' >= {F} FROM t"),
])
def test_engine(sql, expected):
    assert backend(sql, 1000) == expected


def test_longest_name_wins():  # longestMatchFirst; macropro's own $__interval text in the backend
    assert backend("$__interval_ms and $__interval", 60_000) == "60000 and 1m"
    assert backend("$__interval", 90_000) == "90s"


def test_comments_are_blanked_before_expansion():
    # macroInLineCommentNotExpanded: the 3-argument $__timeGroup would fail if it were expanded
    sql = "SELECT time, val FROM metrics -- $__timeGroup(time, '1s', 0)"
    assert backend(sql) == "SELECT time, val FROM metrics " + " " * len("-- $__timeGroup(time, '1s', 0)")
    sql = "SELECT time, val FROM metrics /* $__timeGroup(time, '1s', 0) */"
    assert backend(sql) == "SELECT time, val FROM metrics " + " " * len("/* $__timeGroup(time, '1s', 0) */")
    assert backend("SELECT /* $__foo unterminated") == "SELECT " + " " * len("/* $__foo unterminated")
    assert backend("SELECT 1 -- $__outer($__inner)") == "SELECT 1 " + " " * len("-- $__outer($__inner)")


def test_line_comments_end_at_cr_or_lf():  # lineCommentCROnly, lineCommentCRLF
    assert backend("SELECT * -- cmt\r$__fromTime") == "SELECT * " + " " * 6 + "\r" + F
    assert backend("SELECT * -- cmt\r\n$__fromTime") == "SELECT * " + " " * 6 + "\r\n" + F


def test_comments_stay_when_there_is_no_macro():  # Interpolate's fast path (from the code)
    assert backend("SELECT 1 -- keep me") == "SELECT 1 -- keep me"
    assert backend("SELECT 1 -- $__x") == "SELECT 1 " + " " * len("-- $__x")


def test_a_comment_becomes_as_many_spaces_as_it_has_bytes():  # Go blanks bytes (from the code)
    assert backend("-- Hà Nội\n$__fromTime") == " " * len("-- Hà Nội".encode()) + "\n" + F
    assert strip_comments("SELECT '-- kept' /* x */") == "SELECT '-- kept' " + " " * 7


def test_nesting_is_limited_to_128_levels():  # nestedDepthLimitBoundary
    def deep(n):
        return "$__timeFrom(" * n + "x" + ")" * n

    assert backend(deep(129)) == "x" + f" >= {F}" * 129
    with pytest.raises(MacroError, match="macro nesting exceeds 128 levels"):
        backend(deep(130))


def test_a_nested_error_names_both_macros_and_the_argument():  # nestedErrorNamesArgumentPosition
    with pytest.raises(MacroError) as raised:
        backend("$__dateTimeFilter(d, $__timeFrom())")
    assert "$__dateTimeFilter argument 2" in str(raised.value) and "$__timeFrom" in str(raised.value)


def test_dates_are_in_the_grafana_servers_time_zone():  # time.Unix gives local time (from the code)
    evening = dt.datetime(2024, 5, 1, 20, 0, tzinfo=UTC)
    sql = "$__dateFilter(d)"
    assert expand_server_macros(sql, evening, evening, 0) == "d >= toDate('2024-05-01') AND d <= toDate('2024-05-01')"
    assert (expand_server_macros(sql, evening, evening, 0, server_timezone="Asia/Ho_Chi_Minh")
            == "d >= toDate('2024-05-02') AND d <= toDate('2024-05-02')")


def test_seconds_are_floored_and_the_interval_is_at_least_one_second():
    moment = dt.datetime(2024, 5, 1, 0, 0, 0, 999000, tzinfo=UTC)
    assert expand_server_macros("$__fromTime $__interval_s $__timeInterval_ms(c)", moment, moment, 400) == (
        "toDateTime(1714521600) 1 toStartOfInterval(toDateTime64(c, 3), INTERVAL 400 millisecond)")
    assert expand_server_macros("$__interval_s", moment, moment, 1999) == "1"


# --- the browser: src/data/CHDatasource.test.ts -----------------------------------------------

def test_conditional_all():  # 'Conditional All'
    sql = "select stuff from table where $__conditionalAll(fieldVal in ($fieldVal), $fieldVal);"
    selected = {"fieldVal": Variable("'val1', 'val2'")}
    all_ = {"fieldVal": Variable(ALL, include_all=True)}
    assert apply_conditional_all(sql, all_) == "select stuff from table where 1=1;"
    assert apply_conditional_all(sql, selected) == "select stuff from table where fieldVal in ($fieldVal);"
    sql = ("select stuff from table where $__conditionalAll(fieldVal in ($fieldVal), $fieldVal) and "
           "$__conditionalAll(fieldVal in ($fieldVal2), $fieldVal2);")
    both = {"fieldVal": Variable("'val1', 'val2'"), "fieldVal2": Variable(ALL, include_all=True)}
    assert apply_conditional_all(sql, both) == "select stuff from table where fieldVal in ($fieldVal) and 1=1;"


def test_apply_template_variables_with_conditional_all():  # 'applyTemplateVariables'
    sql = "$__conditionalAll(foo, $fieldVal)"
    assert interpolate_variables(sql, {"fieldVal": Variable("'val1', 'val2'")}) == "foo"
    assert interpolate_variables(sql, {"fieldVal": Variable(ALL, include_all=True)}) == "1=1"


def test_conditional_all_quirks():  # from the code
    everything = Variable.all_selected(["a", "b"])
    assert apply_conditional_all("$__conditionalAll(p IN ($p), ${p})", {"p": everything}) == "1=1"
    assert apply_conditional_all("$__conditionalAll(p IN ($p), $p)", {"p": Variable((), multi=True)}) == "1=1"
    # [[p]] is not recognised, and a variable that is not there keeps the condition
    assert apply_conditional_all("$__conditionalAll(p IN ($p), [[p]])", {"p": everything}) == "p IN ($p)"
    assert apply_conditional_all("$__conditionalAll(p IN ($p), $q)", {"p": everything}) == "p IN ($p)"
    # commas are not quote-aware: three arguments stop the rewriting, earlier calls included
    sql = "$__conditionalAll(a, $p) AND $__conditionalAll(x = ',', $p)"
    assert apply_conditional_all(sql, {"p": everything}) == sql
    # the condition is a String.replace replacement: $$ becomes $
    assert apply_conditional_all("$__conditionalAll(x = '$$', $p)", {"p": Variable("v")}) == "x = '$'"


def test_ad_hoc_filters_macro_without_filters():  # 'should expand $__adHocFilters macro to empty object'
    sql = "SELECT * FROM complex_table settings $__adHocFilters('my_table')"
    assert interpolate_variables(sql) == "SELECT * FROM complex_table settings additional_table_filters={}"


# --- the browser: variables (CHDatasource.format, scenes sceneInterpolator/formatRegistry) -----

VARIABLES = {
    "one": Variable("Huế"),
    "many": Variable(("Hà Nội", "Huế"), multi=True),
    "single_pick": Variable(("Huế",), multi=True),
    "everything": Variable.all_selected(["a", "b", "c"]),
    "everything_single": Variable.all_selected(["a", "b"], multi=False),
    "custom_all": Variable.all_selected(["a", "b"], all_value=".*"),
    "all_refers": Variable.all_selected(["a"], all_value="$other"),
    "other": Variable("hello"),
    "test": Variable(("hello", "world"), multi=True),
}


@pytest.mark.parametrize(("sql", "expected"), [
    ("p = $one", "p = Huế"),  # a single value goes in raw
    ("p IN ($many)", "p IN ('Hà Nội','Huế')"),  # CHDatasource.format: 'a','b'
    ("p IN ($single_pick)", "p IN ('Huế')"),
    ("p IN ($everything)", "p IN ('a','b','c')"),  # All: every option
    ("p IN ($everything_single)", "p IN ('a','b')"),
    ("match(p, '$custom_all')", "match(p, '.*')"),  # a custom all value goes in raw
    ("${custom_all:regex}", ".*"),  # sceneInterpolator.test: allValue is not escaped
    ("${all_refers}", "hello"),  # sceneInterpolator.test: it can contain a variable expression
    ("${custom_all:text} ${everything:text}", "All All"),
    ("$many ${many} [[many]]", "'Hà Nội','Huế' 'Hà Nội','Huế' 'Hà Nội','Huế'"),
    ("${test:text}", "hello + world"),
    ("${test:glob} ${one:glob}", "{hello,world} Huế"),
    ("${test:csv} ${test:pipe} ${test:raw} [[test:csv]]", "hello,world hello|world hello,world hello,world"),
    ("${test:json} ${one:json}", '["hello","world"] Huế'),
    ("$undefined_variable", "$undefined_variable"),  # Grafana leaves it
    ("$__timeFilter(ts) $__interval_s $__fromTime", "$__timeFilter(ts) $__interval_s $__fromTime"),
])
def test_variables(sql, expected):
    assert interpolate_variables(sql, VARIABLES) == expected


@pytest.mark.parametrize(("value", "fmt", "expected"), [  # formatRegistry.test.ts
    (("AA", "BB", "C.*"), "glob", "{AA,BB,C.*}"),
    ("foo", "glob", "foo"),
    (("12", "13"), "raw", "12,13"),
    (("test", "test2"), "pipe", "test|test2"),
    ("test", "csv", "test"),
    (("test", "test2"), "csv", "test,test2"),
    ("test", "json", "test"),
    ("test", "singlequote", "'test'"),
    (("test", "test'2"), "singlequote", "'test','test\\'2'"),
    ("test", "doublequote", '"test"'),
    (("test", 'test"2'), "doublequote", '"test","test\\"2"'),
    ("test'value", "sqlstring", "'test''value'"),
    ('test"value', "sqlstring", "'test\\\"value'"),
    (("test", "test'value2", 'test"value3'), "sqlstring", "'test','test''value2','test\\\"value3'"),
])
def test_formats(value, fmt, expected):
    variable = Variable(value, multi=isinstance(value, tuple))
    assert interpolate_variables(f"${{server:{fmt}}}", {"server": variable}) == expected


def test_time_globals():  # formatRegistry.test.ts date cases, on $__from
    moment = dt.datetime.fromtimestamp(1594671549.254, UTC)
    sql = "$__from ${__from:date} ${__from:date:iso} ${__from:date:seconds} ${__to:date:ms}"
    assert interpolate_variables(sql, time_from=moment, time_to=moment) == (
        "1594671549254 2020-07-13T20:19:09.254Z 2020-07-13T20:19:09.254Z 1594671549 1594671549254")


def test_interval_globals_and_timezone():
    sql = "$__interval ${__interval_ms} $__interval_s $__timezone"
    assert interpolate_variables(sql, interval_ms=90_000, timezone="Asia/Ho_Chi_Minh") == (
        "1m 90000 $__interval_s Asia/Ho_Chi_Minh")


def test_grafana_interval():  # rangeutil secondsToHms and calculateInterval (from the code)
    assert [interval_text(ms) for ms in (90_000, 500, 3_600_000, 2 * 86_400_000, 0.1)] == [
        "1m", "500ms", "1h", "2d", "less than a millisecond"]
    start = dt.datetime(2024, 5, 1, tzinfo=UTC)
    assert panel_interval_ms(start, start + dt.timedelta(hours=1), 1000) == 5000
    assert panel_interval_ms(start, start + dt.timedelta(hours=1), 1000, min_interval="1m") == 60_000
    assert panel_interval_ms(start, start + dt.timedelta(days=1), 1000, min_interval="30") == 60_000


def test_what_is_not_modelled_raises():
    with pytest.raises(MacroError, match="not modelled"):
        interpolate_variables("${test:lucene}", VARIABLES)
    with pytest.raises(MacroError, match="not modelled"):
        interpolate_variables("${__user.login}")
    with pytest.raises(MacroError, match="field paths"):
        interpolate_variables("${test.1}", VARIABLES)
    with pytest.raises(MacroError, match="time range"):
        interpolate_variables("$__from")


# --- the two paths ----------------------------------------------------------------------------

def test_panel_runs_both_steps_in_order():
    sql = ("SELECT $__interval_s, '$__interval' FROM t WHERE $__timeFilter(ts) "
           "AND $__conditionalAll(p IN ($p), $p) AND k IN (${k:singlequote})")
    variables = {"p": Variable(("a", "b"), multi=True), "k": Variable("x'y")}
    assert panel_sql(sql, time_from=FROM, time_to=TO, interval_ms=120_000, variables=variables) == (
        f"SELECT 120, '2m' FROM t WHERE ts >= {F} AND ts <= {T} AND p IN ('a','b') AND k IN ('x\\'y')")


def test_an_alert_rule_gets_the_backend_step_only():
    assert alert_sql("SELECT $__interval, $__interval_s WHERE $__timeFilter(ts)", time_from=FROM, time_to=TO) == (
        f"SELECT 1s, 1 WHERE ts >= {F} AND ts <= {T}")
    with pytest.raises(UnresolvedVariableError, match="alert rules get no template variables"):
        alert_sql("SELECT 1 WHERE p IN ($p)", time_from=FROM, time_to=TO)
    with pytest.raises(UnknownMacroError, match="browser"):
        alert_sql("SELECT 1 WHERE $__conditionalAll(p IN ($p), $p)", time_from=FROM, time_to=TO)
    sql = "SELECT 1 WHERE $__conditionalAll(p IN ($p), $p)"
    assert alert_sql(sql, time_from=FROM, time_to=TO, strict=False) == sql  # what the plugin does


@pytest.mark.parametrize(("sql", "error"), [
    ("SELECT 1 WHERE $__timeFiltr(ts)", UnknownMacroError),  # a typo the plugin passes on
    ("SELECT $__range_s", UnknownMacroError),  # Grafana's, but not for this data source
    ("SELECT 1 WHERE p = $provnce", UnresolvedVariableError),
])
def test_strict_panels_refuse_what_would_reach_clickhouse_unexpanded(sql, error):
    with pytest.raises(error):
        panel_sql(sql, time_from=FROM, time_to=TO, interval_ms=1000, variables=VARIABLES)
    assert panel_sql(sql, time_from=FROM, time_to=TO, interval_ms=1000, variables=VARIABLES, strict=False) == sql


def test_a_commented_out_typo_is_not_an_error():
    sql = "SELECT 1 -- $__timeFiltr(ts) $provnce\nWHERE $__timeFilter(ts)"
    assert panel_sql(sql, time_from=FROM, time_to=TO, interval_ms=1000).endswith(f"ts >= {F} AND ts <= {T}")


# --- on real ClickHouse -----------------------------------------------------------------------

START = dt.datetime(2024, 5, 1, tzinfo=UTC)
EVENTS = [  # (seconds after START, province, kind, value)
    (-1, "Hà Nội", "dossier", 128),  # before the range
    (300, "Hà Nội", "dossier", 1),
    (900, "Hà Nội", "payment", 2),
    (960, "Hà Nội", "feedback", 100),  # a kind not selected
    (1800, "Huế", "dossier", 4),
    (3599, "Huế", "dossier", 8),
    (3600, "Huế", "dossier", 16),  # the range's end is included
    (3601, "Huế", "dossier", 32),  # after the range
    (2400, "Cần Thơ", "payment", 64),
]
BOARD_QUERY = """
SELECT province, count() AS events, sum(value) AS total,
       uniqExact(intDiv(toUInt32(ts), $__interval_s)) AS buckets,
       toUInt32($__toTime) - toUInt32($__fromTime) AS span_s
FROM {table}
WHERE $__timeFilter(ts)  -- the panel's range
  AND kind IN ($kind)
  AND $__conditionalAll(province IN ($province), $province)
GROUP BY province
ORDER BY province
"""
SAFE_ON_18 = {  # what boards may use on 18.16, with the rows it keeps
    "$__timeFilter(ts)": 7,
    "$__timeFrom(ts) AND $__timeTo(ts)": 7,
    "ts >= $__fromTime AND ts <= $__toTime": 7,
    "$__dateFilter(d)": 8,
    "$__dateTimeFilter(d, ts)": 7,
    "$__dt(d, ts)": 7,
    "intDiv(toUInt32(ts), $__interval_s) > 0 AND $__interval_ms = 600000": 9,
}
NOT_SAFE_ON_18 = {
    "timeFilter_ms": "$__timeFilter_ms(ts)",
    "fromTime_ms": "ts >= $__fromTime_ms",
    "toTime_ms": "ts <= $__toTime_ms",
    "timeInterval": "$__timeInterval(ts) > 0",
    "timeInterval_ms": "$__timeInterval_ms(ts) > 0",
    "timeGroup": "$__timeGroup(ts, 5m) > 0",
}


def prepare(store):
    store.execute(f"CREATE DATABASE IF NOT EXISTS {store.database}")
    store.execute(f"CREATE TABLE {store.table('events')} (ts DateTime, d Date, province String, kind String, "
                  "value UInt32) ENGINE = Memory")
    rows = []
    for offset, province, kind, value in EVENTS:
        moment = START + dt.timedelta(seconds=offset)
        rows.append(f"SELECT toDateTime({int(moment.timestamp())}), toDate('{moment.date()}'), {quote(province)}, "
                    f"{quote(kind)}, toUInt32({value})")
    store.execute(f"INSERT INTO {store.table('events')} {' UNION ALL '.join(rows)}")  # no VALUES: clickhouse-driver
    return store


def run_panel(store, sql, **variables):
    expanded = panel_sql(sql.format(table=store.table("events")), time_from=START,
                         time_to=START + dt.timedelta(hours=1), interval_ms=600_000, variables=variables)
    return expanded, store.query(expanded)


def a_board_query_returns_the_right_rows(store):
    kind = Variable(("dossier", "payment"), multi=True)
    picked = Variable(("Hà Nội", "Huế"), multi=True, include_all=True)
    expanded, rows = run_panel(store, BOARD_QUERY, kind=kind, province=picked)
    assert "province IN ('Hà Nội','Huế')" in expanded and "toDateTime(1714525200)" in expanded
    assert rows == [("Huế", 3, 28, 3, 3600), ("Hà Nội", 2, 3, 2, 3600)]

    everything = Variable.all_selected(["Cần Thơ", "Hà Nội", "Huế"])
    expanded, rows = run_panel(store, BOARD_QUERY, kind=kind, province=everything)
    assert "AND 1=1" in expanded
    assert rows == [("Cần Thơ", 1, 64, 1, 3600), ("Huế", 3, 28, 3, 3600), ("Hà Nội", 2, 3, 2, 3600)]


def the_macros_boards_may_use_run_and_the_others_need_a_newer_clickhouse(store):
    for condition, kept in SAFE_ON_18.items():
        _, rows = run_panel(store, "SELECT count() FROM {table} WHERE " + condition)
        assert rows == [(kept,)], condition
    assert set(NOT_SAFE_ON_18) == set(NOT_ON_CLICKHOUSE_18)
    on_18 = store.server_version()[:2] == (18, 16)
    for name, condition in NOT_SAFE_ON_18.items():
        (known,) = store.query(f"SELECT count() FROM system.functions WHERE name = '{NOT_ON_CLICKHOUSE_18[name]}'")[0]
        assert known == (0 if on_18 else 1), name
        if on_18:
            # 46 UNKNOWN_FUNCTION; 62 SYNTAX_ERROR for $__timeInterval_ms: 18.16 has no millisecond INTERVAL
            with pytest.raises(StoreError, match=r"Code: (46|62)\."):
                run_panel(store, "SELECT count() FROM {table} WHERE " + condition)
        else:
            run_panel(store, "SELECT count() FROM {table} WHERE " + condition)


CHECKS = (a_board_query_returns_the_right_rows, the_macros_boards_may_use_run_and_the_others_need_a_newer_clickhouse)


def test_on_clickhouse_18_16(clickhouse_url):
    store = prepare(connect(clickhouse_url))
    assert store.server_version()[:2] == (18, 16)
    for check in CHECKS:
        check(store)


def test_on_embedded_chdb(tmp_path):
    # chDB opens one path per process, for the process's lifetime: a child keeps it from later tests.
    result = subprocess.run([sys.executable, "-m", "tests.test_macros", f"chdb://{tmp_path}/chdb"], check=False,
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]


if __name__ == "__main__":
    chdb_store = prepare(connect(sys.argv[1]))
    for check in CHECKS:
        check(chdb_store)
