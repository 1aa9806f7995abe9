"""Every ClickHouse query of the boards, by its stable name: what tests run and the read-side
benchmark times.

A panel query is named by the comment it starts with (kpi_sql.named: `-- province.on_time_rate`);
a variable query by `<board uid>.variable.<name>`. Names do not depend on the language or the
build, so a benchmark's figures stay comparable across releases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from opscentre.settings import Settings

from .boards import BOARDS
from .common import render
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
