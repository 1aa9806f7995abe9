"""`opscentre dashboards push --grafana URL [--dry-run]`: folders, data sources, boards and the
KPI alert rules into a running Grafana through its HTTP API, by uid, printing what changed.

Uses grafana-client, the maintained successor of grafana-api (no release since 2020, no
alerting API). Each object is read first and written only if it differs from what `build`
would provision, so a second push changes nothing and says so; --dry-run only reads.
Grafana never returns a data source's password: a data source whose other fields match and
that has a password is left alone, so a changed password alone is not pushed.

Alert rules go through the alerting provisioning API (/api/v1/provisioning/alert-rules), then
their groups' evaluation intervals; Grafana is set to send its alerts to the external
Alertmanager only (/api/v1/ngalert/admin_config), so its own Alertmanager notifies no one and the
one routing tree decides. Rules provisioned from files are refused, like boards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlparse

import niquests.exceptions
from grafana_client import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)

from opscentre.settings import Settings

from ..config import Config
from . import alert_rules
from .boards import BOARDS
from .common import FOLDERS, render
from .datasources import DataSource, datasources, secret_variable
from .plugin import CLICKHOUSE_PLUGIN_ID, CLICKHOUSE_PLUGIN_VERSION
from .provisioning import folder_title

GRAFANA_VERSION = (11, 6)
MESSAGE = "opscentre dashboards push"


class PushError(Exception):
    """Grafana cannot be reached, refuses the token, or lacks what the boards need."""


@dataclass(frozen=True)
class Change:
    kind: str  # folder, datasource, dashboard, alert rule, rule group, alerting
    uid: str
    title: str
    action: str  # create, update, unchanged
    detail: str = ""
    write: Callable[[], object] | None = field(default=None, compare=False, repr=False)

    def line(self, dry_run: bool) -> str:
        done = {"create": "created", "update": "updated", "unchanged": "unchanged"}[self.action]
        if dry_run and self.action != "unchanged":
            done = f"would be {done}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind:<10} {self.uid:<24} {self.title}: {done}{detail}"


class _Grafana:
    """grafana-client calls, each failure turned into one line that says what to do."""

    def __init__(self, url: str, token: str | None) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise PushError(f"--grafana: expected http(s)://host[:port][/path], got {url!r}")
        if not token and not parsed.password:
            raise PushError("OPSCENTRE_GRAFANA_TOKEN is not set (a Grafana service account token with the Admin role)")
        self.url = url
        self.api = GrafanaApi.from_url(url, credential=token or None)

    def call(self, what: str, function, *args, missing_ok: bool = False, **kwargs):
        try:
            return function(*args, **kwargs)
        except GrafanaUnauthorizedError:
            raise PushError(f"Grafana at {self.url} rejected the token (401 Unauthorized): "
                            "set OPSCENTRE_GRAFANA_TOKEN to a valid service account token") from None
        except GrafanaTimeoutError:
            raise PushError(f"Grafana at {self.url} did not answer in time ({what})") from None
        except GrafanaClientError as exc:
            if exc.status_code == 404 and missing_ok:
                return None
            if exc.status_code == 403:
                raise PushError(f"Grafana at {self.url} does not let this token {what} (403): "
                                "the service account needs the Admin role") from None
            raise PushError(f"Grafana at {self.url} refused to {what}: {exc.message}") from None
        except GrafanaException as exc:
            if exc.status_code == 0:  # grafana-client wraps transport errors with status 0
                raise PushError(f"cannot reach Grafana at {self.url}: {_reason(exc)}") from None
            raise PushError(f"Grafana at {self.url} failed to {what}: {exc.message}") from None
        except niquests.exceptions.RequestException as exc:
            raise PushError(f"cannot reach Grafana at {self.url}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "timed out", "certificate verify failed"):
        if known.lower() in text.lower():
            return known.lower()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _version(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split("-")[0].split(".")[:2]:
        numbers.append(int(part) if part.isdigit() else 0)
    return tuple(numbers)


def check_grafana(grafana: _Grafana, warn) -> None:
    """Reachable (/api/health), token accepted and the ClickHouse plugin installed (/api/plugins)."""
    health = grafana.call("report its health", grafana.api.client.GET, "/health")
    version = str((health or {}).get("version", ""))
    if version and _version(version) < GRAFANA_VERSION:
        warn(f"note: Grafana {version}; the boards are built for {'.'.join(map(str, GRAFANA_VERSION))}")
    plugins = grafana.call("list its plugins", grafana.api.plugin.list)
    plugin = next((item for item in plugins or [] if item.get("id") == CLICKHOUSE_PLUGIN_ID), None)
    if plugin is None:
        raise PushError(f"Grafana at {grafana.url} has no {CLICKHOUSE_PLUGIN_ID} plugin: install version "
                        f"{CLICKHOUSE_PLUGIN_VERSION} (grafana cli plugins install {CLICKHOUSE_PLUGIN_ID} "
                        f"{CLICKHOUSE_PLUGIN_VERSION}) and restart Grafana")
    installed = str((plugin.get("info") or {}).get("version", ""))
    if installed and installed != CLICKHOUSE_PLUGIN_VERSION:
        warn(f"note: Grafana has {CLICKHOUSE_PLUGIN_ID} {installed}; the boards are written for "
             f"{CLICKHOUSE_PLUGIN_VERSION}")


def _folders(grafana: _Grafana, settings: Settings) -> list[Change]:
    changes = []
    for folder in FOLDERS:
        if not any(board.folder.uid == folder.uid for board in BOARDS):
            continue
        title = folder_title(folder, settings)
        existing = grafana.call("read a folder", grafana.api.folder.get_folder, folder.uid, missing_ok=True)
        if existing is None:
            changes.append(Change("folder", folder.uid, title, "create", write=partial(
                grafana.call, "create a folder", grafana.api.folder.create_folder, title, uid=folder.uid)))
        elif existing.get("title") != title:
            changes.append(Change("folder", folder.uid, title, "update", f"was {existing.get('title')!r}", partial(
                grafana.call, "rename a folder", grafana.api.folder.update_folder, folder.uid, title=title,
                version=existing.get("version"), overwrite=True)))
        else:
            changes.append(Change("folder", folder.uid, title, "unchanged"))
    return changes


def _datasource_differences(source: DataSource, existing: dict) -> list[str]:
    wanted = source.fields()
    differences = [key for key, value in wanted.items() if key != "jsonData" and existing.get(key) != value]
    stored = existing.get("jsonData") or {}
    differences += [f"jsonData.{key}" for key, value in wanted["jsonData"].items() if stored.get(key) != value]
    return differences


def _datasources(grafana: _Grafana, settings: Settings) -> list[Change]:
    changes = []
    for source in datasources(settings):
        secrets = {key: getattr(settings, field) for key, field in source.secrets.items()}
        unset = [secret_variable(source.secrets[key]) for key, value in secrets.items() if not value]
        existing = grafana.call("read a data source", grafana.api.datasource.get_datasource_by_uid, source.uid,
                                missing_ok=True)
        if existing is None:
            payload = {**source.fields(), "secureJsonData": {k: v for k, v in secrets.items() if v}}
            detail = f"no {', '.join(unset)}: created without it" if unset else ""
            changes.append(Change("datasource", source.uid, source.name, "create", detail, partial(
                grafana.call, "create a data source", grafana.api.datasource.create_datasource, payload)))
            continue
        differences = _datasource_differences(source, existing)
        stored_secrets = existing.get("secureJsonFields") or {}
        differences += [f"secureJsonData.{key}" for key, value in secrets.items()
                        if value and not stored_secrets.get(key)]
        if not differences:
            changes.append(Change("datasource", source.uid, source.name, "unchanged"))
            continue
        if existing.get("readOnly"):
            raise PushError(f"data source {source.uid} is provisioned from files in Grafana at {grafana.url} "
                            f"and differs ({', '.join(differences)}): change it with `dashboards build`")
        payload = {
            **{key: existing[key] for key in ("basicAuth", "withCredentials", "readOnly") if key in existing},
            **source.fields(),
            "jsonData": {**(existing.get("jsonData") or {}), **source.json_data},
            "secureJsonData": {k: v for k, v in secrets.items() if v},
        }
        changes.append(Change("datasource", source.uid, source.name, "update", ", ".join(differences), partial(
            grafana.call, "update a data source", grafana.api.datasource.update_datasource_by_uid, source.uid,
            payload)))
    return changes


def _comparable(board_json: dict) -> dict:
    # Grafana adds its own id and version to what it stores.
    return {key: value for key, value in board_json.items() if key not in ("id", "version")}


def _boards(grafana: _Grafana, settings: Settings) -> list[Change]:
    changes = []
    for board in BOARDS:
        wanted = render(board, settings)
        existing = grafana.call("read a dashboard", grafana.api.dashboard.get_dashboard, board.uid, missing_ok=True)
        detail = ""
        if existing is not None:
            stored, meta = existing.get("dashboard") or {}, existing.get("meta") or {}
            if _comparable(stored) == _comparable(wanted) and meta.get("folderUid") == board.folder.uid:
                changes.append(Change("dashboard", board.uid, wanted["title"], "unchanged"))
                continue
            if meta.get("provisioned"):
                raise PushError(f"dashboard {board.uid} is provisioned from files in Grafana at {grafana.url}: "
                                "update it with `dashboards build`, or remove its provisioning to push it")
            moved = meta.get("folderUid") != board.folder.uid
            detail = "moved to its folder" if moved and _comparable(stored) == _comparable(wanted) else ""
        save = partial(grafana.call, "save a dashboard", grafana.api.dashboard.update_dashboard, {
            "dashboard": {**wanted, "id": None}, "folderUid": board.folder.uid, "overwrite": True, "message": MESSAGE,
        })
        changes.append(Change("dashboard", board.uid, wanted["title"], "create" if existing is None else "update",
                              detail, save))
    return changes


# What a rule's GET returns that is ours to compare (Grafana adds id, updated, provenance, ...).
RULE_FIELDS = ("title", "condition", "data", "noDataState", "execErrState", "for", "annotations", "labels",
               "folderUID", "ruleGroup", "isPaused", "orgID")


def _rule_differences(wanted: dict, existing: dict) -> list[str]:
    return [key for key in RULE_FIELDS if key in wanted and existing.get(key) != wanted[key]]


def _alert_rules(grafana: _Grafana, settings: Settings) -> list[Change]:
    config = Config.from_settings(settings)
    provisioning = grafana.api.alertingprovisioning
    changes = []
    for rule in alert_rules.rules(config):
        wanted = alert_rules.api_rule(rule, config)
        existing = grafana.call("read an alert rule", provisioning.get_alertrule, rule.uid, missing_ok=True)
        if existing is None:
            changes.append(Change("alert rule", rule.uid, rule.title, "create", write=partial(
                grafana.call, "create an alert rule", provisioning.create_alertrule, wanted)))
            continue
        differences = _rule_differences(wanted, existing)
        if not differences:
            changes.append(Change("alert rule", rule.uid, rule.title, "unchanged"))
            continue
        if existing.get("provenance") == "file":
            raise PushError(f"alert rule {rule.uid} is provisioned from files in Grafana at {grafana.url}: update it "
                            "with `dashboards build`, or remove its provisioning to push it")
        changes.append(Change("alert rule", rule.uid, rule.title, "update", ", ".join(differences), partial(
            grafana.call, "update an alert rule", provisioning.update_alertrule, rule.uid, wanted)))
    for (folder_uid, group), interval_s in alert_rules.group_intervals().items():
        existing = grafana.call("read a rule group", provisioning.get_rule_group, folder_uid, group, missing_ok=True)
        if existing is not None and existing.get("interval") == interval_s:
            changes.append(Change("rule group", group, folder_uid, "unchanged"))
            continue
        changes.append(Change("rule group", group, folder_uid, "create" if existing is None else "update",
                              f"every {interval_s} s", partial(_set_interval, grafana, folder_uid, group, interval_s)))
    return changes


def _set_interval(grafana: _Grafana, folder_uid: str, group: str, interval_s: int) -> None:
    # After the rules: a new rule made its group (with Grafana's default interval), read it now.
    provisioning = grafana.api.alertingprovisioning
    current = grafana.call("read a rule group", provisioning.get_rule_group, folder_uid, group)
    grafana.call("set a rule group's interval", provisioning.update_rule_group, folder_uid, group,
                 {**current, "interval": interval_s})


ADMIN_CONFIG = "/v1/ngalert/admin_config"


def _alerting(grafana: _Grafana, settings: Settings) -> list[Change]:
    """Grafana-managed alerts to the external Alertmanager (the data source) only."""
    current = grafana.call("read its alerting settings", grafana.api.client.GET, ADMIN_CONFIG, missing_ok=True) or {}
    choice = current.get("alertmanagersChoice", "all")
    if choice == "external":
        return [Change("alerting", "admin_config", "alerts to the external Alertmanager", "unchanged")]
    return [Change("alerting", "admin_config", "alerts to the external Alertmanager", "update", f"was {choice!r}",
                   partial(grafana.call, "set where it sends alerts", grafana.api.client.POST, ADMIN_CONFIG,
                           json={"alertmanagersChoice": "external"}))]


def push(url: str, settings: Settings, *, dry_run: bool = False, out=print, warn=None) -> list[Change]:
    """Create or update every folder, data source and board in Grafana at `url`; returns the changes.

    Everything is read and compared first: a refusal found on the way (a provisioned object, a
    missing plugin) stops the push before anything is written.
    """
    warn = warn or (lambda text: print(text, file=sys.stderr))
    grafana = _Grafana(url, settings.grafana_token)
    check_grafana(grafana, warn)
    steps = (_folders, _datasources, _boards, _alert_rules, _alerting)
    changes = [change for step in steps for change in step(grafana, settings)]
    for change in changes:
        if change.write is not None and not dry_run:
            change.write()
        out(change.line(dry_run))
    out(summary(changes, dry_run))
    return changes


def summary(changes: list[Change], dry_run: bool) -> str:
    counts = {action: sum(1 for change in changes if change.action == action) for action in ("create", "update")}
    unchanged = len(changes) - counts["create"] - counts["update"]
    if not counts["create"] and not counts["update"]:
        return f"push: Grafana already matches the boards ({unchanged} unchanged), nothing to change"
    if dry_run:
        return (f"push --dry-run: would create {counts['create']}, update {counts['update']}, "
                f"leave {unchanged} unchanged; Grafana was not changed")
    return f"push: created {counts['create']}, updated {counts['update']}, {unchanged} unchanged"
