"""The ClickHouse data source plugin: its version, its query model, its connection settings.

The foundation SDK has no ClickHouse query type, so this module adds one the way the SDK's own
types are made: a `cog.variants.Dataquery` with `to_json`/`from_json`, a `cog.builder.Builder`
for it, and a registered variant so `Dashboard.from_json` reads it back.

Read from grafana/clickhouse-datasource at the pinned tag (v4.20.0):
- src/types/sql.ts (CHSqlQuery: pluginVersion, editorType "sql", rawSql, format, queryType);
- src/data/migration.ts: a query without a pluginVersion >= 4.0.0 is taken as a v3 query and
  migrated in the browser, so every query carries the pinned version;
- src/data/utils.ts mapGrafanaFormatToQueryType (format 0 timeseries, 1 table, 2 logs, 3 traces);
- pkg/plugin/settings.go (jsonData host, port, protocol, secure, username, defaultDatabase;
  secureJsonData password; port and secure are also accepted as strings).
"""

from __future__ import annotations

import enum
import typing
from urllib.parse import unquote, urlparse

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from opscentre.settings import SettingsError

CLICKHOUSE_PLUGIN_ID = "grafana-clickhouse-datasource"
# The one place the plugin version is named: queries, the data source and `push`'s check use it,
# and so does the macro expansion (dashboards/macros.py) that mirrors this version's engine.
CLICKHOUSE_PLUGIN_VERSION = "4.20.0"


class Format(enum.IntEnum):
    """sqlutil.FormatQueryOption of grafana-plugin-sdk-go, which the plugin's backend reads."""

    TIME_SERIES = 0
    TABLE = 1
    LOGS = 2
    TRACES = 3


_QUERY_TYPE = {Format.TIME_SERIES: "timeseries", Format.TABLE: "table", Format.LOGS: "logs", Format.TRACES: "traces"}


class ClickHouseQuery(cogvariants.Dataquery):
    """One SQL query of the ClickHouse plugin, as its SQL editor saves it."""

    def __init__(self, raw_sql: str = "", ref_id: str = "", format_val: Format = Format.TABLE,
                 datasource: DataSourceRef | None = None, hide: bool | None = None) -> None:
        self.raw_sql = raw_sql
        self.ref_id = ref_id
        self.format_val = Format(format_val)
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "editorType": "sql",
            "rawSql": self.raw_sql,
            "format": int(self.format_val),
            "queryType": _QUERY_TYPE[self.format_val],
            "pluginVersion": CLICKHOUSE_PLUGIN_VERSION,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        return cls(
            raw_sql=data.get("rawSql", ""),
            ref_id=data.get("refId", ""),
            format_val=Format(data.get("format", Format.TABLE)),
            datasource=DataSourceRef.from_json(data["datasource"]) if "datasource" in data else None,
            hide=data.get("hide"),
        )


class ClickHouseQueryBuilder(cogbuilder.Builder[ClickHouseQuery]):
    def __init__(self, raw_sql: str = "") -> None:
        self._internal = ClickHouseQuery(raw_sql=raw_sql)

    def build(self) -> ClickHouseQuery:
        return self._internal

    def raw_sql(self, raw_sql: str) -> typing.Self:
        self._internal.raw_sql = raw_sql
        return self

    def ref_id(self, ref_id: str) -> typing.Self:
        self._internal.ref_id = ref_id
        return self

    def format(self, format_val: Format) -> typing.Self:
        self._internal.format_val = Format(format_val)
        return self

    def datasource(self, datasource: DataSourceRef) -> typing.Self:
        self._internal.datasource = datasource
        return self

    def hide(self, hide: bool) -> typing.Self:
        self._internal.hide = hide
        return self


def variant_config() -> cogruntime.DataqueryConfig:
    return cogruntime.DataqueryConfig(identifier=CLICKHOUSE_PLUGIN_ID, from_json_hook=ClickHouseQuery.from_json)


cogruntime.register_dataquery_variant(variant_config())

# scheme -> (plugin protocol, TLS, default port)
_SCHEMES = {
    "clickhouse": ("native", False, 9000),
    "clickhouses": ("native", True, 9440),
    "http": ("http", False, 8123),
    "https": ("http", True, 8443),
}


def clickhouse_json_data(url: str, setting: str = "OPSCENTRE_GRAFANA_CLICKHOUSE") -> dict[str, object]:
    """The data source's jsonData for a `clickhouse[s]://user@host:port/database` or `http[s]://` URL."""
    parsed = urlparse(url)
    if parsed.scheme not in _SCHEMES or not parsed.hostname:
        raise SettingsError(f"{setting}: expected {'|'.join(_SCHEMES)}://user@host[:port]/database, got {url!r}")
    if parsed.password is not None:
        raise SettingsError(f"{setting}: the password goes in {setting}_PASSWORD, not in the URL")
    protocol, secure, default_port = _SCHEMES[parsed.scheme]
    try:
        port = parsed.port or default_port
    except ValueError:
        raise SettingsError(f"{setting}: bad port in {url!r}") from None
    return {
        "host": parsed.hostname,
        "port": port,
        "protocol": protocol,
        "secure": secure,
        "username": unquote(parsed.username or "default"),
        "defaultDatabase": unquote(parsed.path.lstrip("/")) or "default",
        "version": CLICKHOUSE_PLUGIN_VERSION,
    }
