"""Every ClickHouse query of the boards, by its stable name: what tests run and the read-side
benchmark times.

A panel query is named by the comment it starts with (kpi_sql.named: `-- province.on_time_rate`);
a variable query by `<board uid>.variable.<name>`. Names do not depend on the language or the
build, so a benchmark's figures stay comparable across releases.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from opscentre.settings import Settings

from ..macros import Variable, panel_interval_ms, panel_sql
from . import reference
from .boards import BOARDS
from .common import TIMEZONE, render
from .datasources import CLICKHOUSE_UID

_NAME = re.compile(r"^-- ([\w.]+)\n")


@dataclass(frozen=True)
class BoardQuery:
    name: str
    board: str  # uid
    panel: str  # the panel's type ("stat", "table", "timeseries", "bargauge"), or "variable"
    title: str  # as shown (in the build's language)
    sql: str  # the rawSql, before Grafana's substitutions
    format: int  # 0 time series, 1 table
    time_from: str | None = None  # the panel's own range (`1h`, `now/d`, `now/M`), if any
    columns: tuple[str, ...] = field(default_factory=tuple)  # fields a table shows, in order


def _panels(board_json: dict):
    for panel in board_json.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _shown_columns(panel: dict) -> tuple[str, ...]:
    for transformation in panel.get("transformations", []):
        if transformation["id"] == "organize":
            return tuple(transformation["options"]["includeByName"])
    return ()


def board_queries(settings: Settings | None = None) -> list[BoardQuery]:
    settings = settings or Settings()
    found: list[BoardQuery] = []
    for board in BOARDS:
        board_json = render(board, settings)
        for variable in board_json.get("templating", {}).get("list", []):
            if (variable.get("datasource") or {}).get("uid") == CLICKHOUSE_UID:
                found.append(BoardQuery(f"{board.uid}.variable.{variable['name']}", board.uid, "variable",
                                        variable.get("label", variable["name"]), variable["query"], 1))
        for panel in _panels(board_json):
            for target in panel.get("targets", []):
                if (target.get("datasource") or {}).get("uid") != CLICKHOUSE_UID:
                    continue
                match = _NAME.match(target["rawSql"])
                if not match:
                    raise ValueError(f"{board.uid} / {panel['title']}: a ClickHouse query without its name comment")
                found.append(BoardQuery(match.group(1), board.uid, panel["type"], panel["title"], target["rawSql"],
                                        target["format"], panel.get("timeFrom"), _shown_columns(panel)))
    names = [query.name for query in found]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"board query names used twice: {', '.join(repeated)}")
    return found


PANEL_WIDTH_PX = 1000  # a panel's maxDataPoints: its width in pixels


def own_range(time_from: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The range of a panel with one of its own, as Grafana resolves it in the boards' time zone."""
    local = now.astimezone(ZoneInfo(TIMEZONE))
    if time_from == "1h":
        return now - dt.timedelta(hours=1), now
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if time_from == "now/d":
        return day.astimezone(dt.UTC), now
    if time_from == "now/M":
        return day.replace(day=1).astimezone(dt.UTC), now
    raise ValueError(f"a panel range {time_from!r} not used by the boards")


def default_variables(settings: Settings, board: str) -> dict[str, Variable]:
    """The values a board opens on: the settings' province, every agency."""
    codes = list(reference.provinces(settings))
    province = reference.default_province(settings)
    if board == "opscentre-national":
        return {}
    if board == "opscentre-security":
        return {"province": Variable((province,), codes, multi=True, include_all=True)}
    values = {"province": Variable(province, codes)}
    if board == "opscentre-agency":
        values["agency"] = Variable.all_selected([], multi=False)
    return values


def expand(query: BoardQuery, start: dt.datetime, end: dt.datetime, variables: dict[str, Variable],
           now: dt.datetime | None = None) -> str:
    """What ClickHouse receives for the query, the board's range [start, end) (the panel's own when
    it has one, ending `now`, default `end`) and these variable values: dashboards/macros.py."""
    if query.time_from:
        start, end = own_range(query.time_from, now or end)
    return panel_sql(query.sql, time_from=start, time_to=end, variables=variables, timezone=TIMEZONE,
                     interval_ms=panel_interval_ms(start, end, PANEL_WIDTH_PX))
