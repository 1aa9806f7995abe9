"""What every board shares: folders, the board record, wall-screen defaults, panel helpers.

A board is a function of its `Texts` (the language) and the Settings, returning a
foundation-SDK `Dashboard` builder; `render` turns it into the JSON Grafana stores. Helpers set
what a wall screen needs on every panel (units, thresholds, legends) so boards stay short.
Uids are constants: a board, its folder and its data sources keep their uid in every build,
in every language, so links, bookmarks and alert rules survive a rebuild.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from opscentre.settings import Settings

from .datasources import CLICKHOUSE, PROMETHEUS
from .i18n import Texts
from .plugin import ClickHouseQueryBuilder, Format

TIMEZONE = "Asia/Ho_Chi_Minh"
REFRESH = "30s"
REFRESH_INTERVALS = ["30s", "1m", "5m", "15m"]
TAG = "opscentre"
GRID_WIDTH = 24
_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

Builder = cogbuilder.Builder


@dataclass(frozen=True)
class Folder:
    uid: str
    title: str  # English; shown through Texts


OPERATIONS = Folder("opscentre-operations", "Operations")
SECURITY = Folder("opscentre-security", "Information security")
PLATFORM = Folder("opscentre-platform", "Platform")
FOLDERS = (OPERATIONS, SECURITY, PLATFORM)


@dataclass(frozen=True)
class Board:
    uid: str
    folder: Folder
    build: Callable[[Texts, Settings], dashboard_builders.Dashboard]
    catalogue: Mapping[str, str] = field(default_factory=dict)  # the board's Vietnamese texts

    def texts(self, settings: Settings) -> Texts:
        return Texts(settings.dashboard_language, self.catalogue)


def render(board: Board, settings: Settings) -> dict:
    """The board's dashboard JSON, as Grafana stores it (same settings, same JSON)."""
    if not _UID.match(board.uid):
        raise ValueError(f"board uid {board.uid!r}: 1-40 letters, digits, - or _")
    model = board.build(board.texts(settings), settings).build()
    if model.uid != board.uid:
        raise ValueError(f"board {board.uid!r} built a dashboard with uid {model.uid!r}")
    _number_panels(model)
    return json.loads(json.dumps(model, cls=JSONEncoder))


def to_json(board_json: dict) -> str:
    """The one serialisation of a board: byte-identical across builds."""
    return json.dumps(board_json, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def _number_panels(model: dashboard_models.Dashboard) -> None:
    # Panel ids in reading order: stable, so ?viewPanel= links keep pointing at the same panel.
    number = 0
    for panel in model.panels or []:
        number += 1
        panel.id_val = number
        for child in getattr(panel, "panels", None) or []:
            number += 1
            child.id_val = number


def dashboard(uid: str, title: str, texts: Texts, *, description: str = "", time_from: str = "now-6h",
              tags: Sequence[str] = ()) -> dashboard_builders.Dashboard:
    """A wall-screen board: Asia/Ho_Chi_Minh, refreshed every 30 s, read-only, linked to the others."""
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG, *tags])
        .timezone(TIMEZONE)
        .week_start("monday")
        .refresh(REFRESH)
        .time(time_from, "now")
        .timepicker(dashboard_builders.TimePicker().refresh_intervals(REFRESH_INTERVALS))
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .readonly()
        .link(board_links(texts))
    )


def board_links(texts: Texts) -> dashboard_builders.DashboardLink:
    """The menu of every opscentre board, carrying the time range and the variables."""
    return (
        dashboard_builders.DashboardLink(texts("Boards"))
        .type(dashboard_models.DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
        .icon("external link")
        .tooltip("")
        .target_blank(False)
    )


def board_url(uid: str, carry: Sequence[str] = (), set_values: Mapping[str, str] | None = None) -> str:
    """A link to another board keeping the time range, the named variables and set values.

    `set_values` maps a variable to a value expression, e.g. {"agency": "${__data.fields.agency}"}
    in a data link, so a click on a row opens the other board on that row.
    """
    parts = ["${__url_time_range}", *(f"${{{name}:queryparam}}" for name in carry)]
    parts += [f"var-{name}={value}" for name, value in (set_values or {}).items()]
    return f"/d/{uid}?" + "&".join(parts)


def link(title: str, url: str) -> dashboard_builders.DashboardLink:
    return (
        dashboard_builders.DashboardLink(title)
        .type(dashboard_models.DashboardLinkType.LINK)
        .url(url)
        .icon("dashboard")
        .tooltip("")
        .tags([])
        .as_dropdown(False)
        .include_vars(False)
        .keep_time(False)
        .target_blank(False)
    )


# Queries

def prom(expr: str, legend: str = "", *, instant: bool = False, table_format: bool = False
         ) -> prometheus_builders.Dataquery:
    query = (
        prometheus_builders.Dataquery()
        .expr(expr)
        .datasource(PROMETHEUS)
        .editor_mode(prometheus_models.QueryEditorMode.CODE)
    )
    query = query.instant() if instant else query.range()
    if legend:
        query = query.legend_format(legend)
    if table_format:
        query = query.format(prometheus_models.PromQueryFormat.TABLE)
    return query


def clickhouse(sql: str, format_val: Format = Format.TABLE) -> ClickHouseQueryBuilder:
    return ClickHouseQueryBuilder(sql).format(format_val).datasource(CLICKHOUSE)


# Field settings

def steps(base: str, *levels: tuple[float, str]) -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds: `base` colour below the first level, then each (value, colour).

    Grafana saves the base step's value as null and reads it as -Infinity
    (validateFieldConfig in @grafana/data).
    """
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(None, base)]
               + [dashboard_models.Threshold(value, colour) for value, colour in levels])
    )


def value_texts(mapping: Mapping[str, tuple[str, str]]) -> list[dashboard_models.ValueMapping]:
    """Value -> (text, colour) shown instead of the value (e.g. 1 -> Up, green)."""
    return [dashboard_models.ValueMap({
        value: dashboard_models.ValueMappingResult(text=text, color=colour, index=index)
        for index, (value, (text, colour)) in enumerate(mapping.items())
    })]


# Panels. Sizes are grid units: 24 columns wide, rows of 30 px.

def _with_queries(panel, queries: Sequence[Builder]):
    for index, query in enumerate(queries):
        panel = panel.with_target(query.ref_id(chr(ord("A") + index)))
    return panel


def _describe(panel, title: str, description: str, width: int, height: int):
    panel = panel.title(title).span(width).height(height)
    return panel.description(description) if description else panel


def field_property(name: str, value) -> dashboard_models.DynamicConfigValue:
    """One field setting of an override (`unit`, `custom.lineStyle`, ...)."""
    return dashboard_models.DynamicConfigValue(id_val=name, value=value)


def rename_field(field_name: str, shown: str) -> dashboard_models.DataTransformerConfig:
    """Show a series or column under another name. A transformation, not a displayName override,
    so that table overrides and data links can keep the field's own name."""
    return dashboard_models.DataTransformerConfig(id_val="renameByRegex", options={"regex": f"^{field_name}$",
                                                                                    "renamePattern": shown})


def with_options(panel, *, links: Sequence[Builder] = (), time_from: str | None = None):
    """Links in the panel's header (to another board) and a time range of its own (`1h`: the last
    hour; `now/d`: today so far; `now/M`: this month so far), whatever the board's range."""
    if links:
        panel = panel.links(list(links))
    if time_from:
        panel = panel.time_from(time_from)
    return panel


def stat_panel(title: str, queries: Sequence[Builder], *, unit: str, thresholds=None, description: str = "",
               mappings: list | None = None, width: int = 4, height: int = 4, decimals: int | None = None,
               calc: str = "lastNotNull") -> stat.Panel:
    """One big number per series, coloured by its thresholds (the background, readable from afar)."""
    panel = (
        stat.Panel()
        .unit(unit)
        .color_mode(common_models.BigValueColorMode.BACKGROUND)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .text_mode(common_models.BigValueTextMode.AUTO)
        .justify_mode(common_models.BigValueJustifyMode.CENTER)
        .reduce_options(common_builders.ReduceDataOptions().calcs([calc]).values(False))
    )
    panel = _describe(panel, title, description, width, height)
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    if mappings:
        panel = panel.mappings(mappings)
    if decimals is not None:
        panel = panel.decimals(decimals)
    return _with_queries(panel, queries)


def timeseries_panel(title: str, queries: Sequence[Builder], *, unit: str, axis_label: str = "",
                     description: str = "", thresholds=None, stacked: bool = False, width: int = 12,
                     height: int = 8, min_value: float | None = 0) -> timeseries.Panel:
    """Lines over the board's time range, the legend a table of the last and the largest value
    (beside a wide panel, under a narrow one)."""
    panel = (
        timeseries.Panel()
        .unit(unit)
        .line_width(1)
        .fill_opacity(25 if stacked else 10)
        .show_points(common_models.VisibilityMode.NEVER)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.RIGHT if width >= 12 else common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(common_builders.VizTooltipOptions().mode(common_models.TooltipDisplayMode.MULTI)
                 .sort(common_models.SortOrder.DESCENDING))
    )
    panel = _describe(panel, title, description, width, height)
    if axis_label:
        panel = panel.axis_label(axis_label)
    if min_value is not None:
        panel = panel.min(min_value)
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL))
    if thresholds is not None:
        panel = panel.thresholds(thresholds).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.DASHED))
    return _with_queries(panel, queries)


def bar_gauge_panel(title: str, queries: Sequence[Builder], *, unit: str, thresholds=None,
                    description: str = "", width: int = 8, height: int = 8,
                    max_value: float | None = None) -> bargauge.Panel:
    """Horizontal bars, one per series (ranking agencies, partitions per worker)."""
    panel = (
        bargauge.Panel()
        .unit(unit)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .min(0)
    )
    panel = _describe(panel, title, description, width, height)
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    if max_value is not None:
        panel = panel.max(max_value)
    return _with_queries(panel, queries)


def table_panel(title: str, queries: Sequence[Builder], *, columns: Mapping[str, str], unit: str = "",
                description: str = "", width: int = 12, height: int = 8,
                transformations: Sequence[dashboard_models.DataTransformerConfig] = (),
                units: Mapping[str, str] | None = None, decimals: Mapping[str, int] | None = None,
                colours: Mapping[str, Builder] | None = None,
                data_links: Sequence[Builder] = ()) -> table.Panel:
    """A table whose `columns` (field name -> header, in order) are the only ones shown.

    Several queries are joined on their common labels first (the `merge` transformation).
    `units`, `decimals` and `colours` (thresholds, shown as the cell's background) are per field
    name; Grafana matches them on the header the field is shown under. `data_links` open from a
    row: `${__data.fields.<field>}` is that row's value.
    """
    panel = table.Panel().cell_height(common_models.TableCellHeight.SM).show_header(True)
    if unit:
        panel = panel.unit(unit)
    panel = _describe(panel, title, description, width, height)
    for name in columns:
        properties = []
        if units and name in units:
            properties.append(dashboard_models.DynamicConfigValue(id_val="unit", value=units[name]))
        if decimals and name in decimals:
            properties.append(dashboard_models.DynamicConfigValue(id_val="decimals", value=decimals[name]))
        if colours and name in colours:
            properties += [
                dashboard_models.DynamicConfigValue(id_val="thresholds", value=colours[name].build()),
                dashboard_models.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
                dashboard_models.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
            ]
        if properties:
            panel = panel.override_by_name(columns[name], properties)
    if data_links:
        panel = panel.data_links(list(data_links))
    chain = list(transformations)
    if len(queries) > 1:
        chain.insert(0, dashboard_models.DataTransformerConfig(id_val="merge", options={}))
    chain.append(dashboard_models.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {},
        "includeByName": {name: True for name in columns},
        "indexByName": {name: index for index, name in enumerate(columns)},
        "renameByName": dict(columns),
    }))
    panel = panel.transformations(chain)
    return _with_queries(panel, queries)


def with_rows(board: dashboard_builders.Dashboard, rows: Sequence[tuple[str, Sequence[Builder]]]
              ) -> dashboard_builders.Dashboard:
    """Open rows, each followed by its panels (Grafana keeps an open row's panels beside it, not in it)."""
    for title, panels in rows:
        board = board.with_row(dashboard_builders.Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    return board


# Variables

def prometheus_variable(name: str, label: str, query: str, *, include_all: bool = True, multi: bool = True
                        ) -> dashboard_builders.QueryVariable:
    """Values of a label (`label_values(metric, label)`); All matches every value, present or not.

    The query is saved as a string, which Grafana's Prometheus variable editor reads (and which the
    dashboard schema admits: its object form allows only object values).
    """
    variable = (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    return variable.all_value(".*") if include_all else variable


def clickhouse_variable(name: str, label: str, sql: str, *, include_all: bool = True, multi: bool = True
                        ) -> dashboard_builders.QueryVariable:
    """Values from SQL: one column (value = text), or two (value, then the text shown).

    Saved as the SQL string: the plugin's variable support takes a string as its rawSql
    (src/data/CHVariableSupport.tsx, query()), and the dashboard schema's object form for a
    variable query admits only object values, so {queryType, rawSql} would not validate.
    """
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(CLICKHOUSE)
        .query(sql)
        .refresh(dashboard_models.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dashboard_models.VariableSort.DISABLED)
        .multi(multi)
        .include_all(include_all)
    )


def _escape(item: str) -> str:
    return item.replace(",", "\\,")


def custom_variable(name: str, label: str, choices: Mapping[str, str], *, default: str | None = None,
                    include_all: bool = False, multi: bool = False) -> dashboard_builders.CustomVariable:
    """A fixed list of (value -> text shown) choices, e.g. a province list read from the settings."""
    options = [dashboard_models.VariableOption(text=text, value=value, selected=value == default)
               for value, text in choices.items()]
    variable = (
        dashboard_builders.CustomVariable(name)
        .label(label)
        # Grafana's custom list: comma-separated "text : value" pairs, a literal comma as "\\,".
        .values(",".join(f"{_escape(text)} : {_escape(value)}" for value, text in choices.items()))
        .options(options)
        .multi(multi)
        .include_all(include_all)
    )
    if default is not None:
        variable = variable.current(dashboard_models.VariableOption(text=choices[default], value=default,
                                                                    selected=True))
    return variable
