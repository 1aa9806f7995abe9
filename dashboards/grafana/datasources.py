"""The data sources the boards read, with uids the boards and alert rules refer to.

One definition serves both routes into Grafana: `provisioning` writes each secret as a
`${VARIABLE}` reference that Grafana expands from its own environment (`$VAR`/`${VAR}` are
expanded once by os.ExpandEnv, pkg/services/provisioning/values/values.go; `$__env{}` is
expanded twice, which breaks a password containing `$`), and `push` sends the value it reads
from the same variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grafana_foundation_sdk.models.dashboard import DataSourceRef

from opscentre.settings import Settings

from .plugin import CLICKHOUSE_PLUGIN_ID, clickhouse_json_data

CLICKHOUSE_UID = "opscentre-clickhouse"
PROMETHEUS_UID = "opscentre-prometheus"
ALERTMANAGER_UID = "opscentre-alertmanager"
# Grafana's $__rate_interval is four scrape intervals at least: it must know the interval.
PROMETHEUS_SCRAPE_INTERVAL = "15s"

CLICKHOUSE = DataSourceRef(type_val=CLICKHOUSE_PLUGIN_ID, uid=CLICKHOUSE_UID)
PROMETHEUS = DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)


@dataclass(frozen=True)
class DataSource:
    uid: str
    name: str
    type: str
    json_data: dict
    url: str = ""
    # Never the default: boards name their data source by uid, and an existing Grafana keeps its
    # own default (two provisioned defaults in one organisation stop Grafana's provisioning).
    is_default: bool = False
    # secureJsonData key -> the Settings field (OPSCENTRE_<FIELD>) holding its value
    secrets: dict[str, str] = field(default_factory=dict)

    def fields(self) -> dict:
        """What Grafana stores for this data source, secrets aside (the API's and the file's keys)."""
        return {
            "uid": self.uid, "name": self.name, "type": self.type, "access": "proxy", "url": self.url,
            "isDefault": self.is_default, "jsonData": self.json_data,
        }


def secret_variable(settings_field: str) -> str:
    return "OPSCENTRE_" + settings_field.upper()


def datasources(settings: Settings) -> list[DataSource]:
    # Names are unique in a Grafana organisation, and file provisioning finds a data source by its
    # name: a plain "Prometheus" would take over the one an existing Grafana already has.
    return [
        DataSource(
            uid=CLICKHOUSE_UID, name="opscentre ClickHouse", type=CLICKHOUSE_PLUGIN_ID,
            json_data=clickhouse_json_data(settings.grafana_clickhouse),
            secrets={"password": "grafana_clickhouse_password"},
        ),
        DataSource(
            uid=PROMETHEUS_UID, name="opscentre Prometheus", type="prometheus", url=settings.grafana_prometheus,
            json_data={"httpMethod": "POST", "timeInterval": PROMETHEUS_SCRAPE_INTERVAL},
        ),
        # The Alertmanager that Prometheus and the forwarder post to: Grafana sends the boards' alert
        # rules there too (handleGrafanaManagedAlerts, through API v2), so one routing tree pages.
        DataSource(
            uid=ALERTMANAGER_UID, name="opscentre Alertmanager", type="alertmanager", url=settings.grafana_alertmanager,
            json_data={"implementation": "prometheus", "handleGrafanaManagedAlerts": True},
        ),
    ]
