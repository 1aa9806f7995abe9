"""`opscentre dashboards build --out DIR`: the Grafana provisioning tree the production stack mounts.

    DIR/grafana/provisioning/datasources/opscentre.yml   mount DIR/grafana/provisioning
    DIR/grafana/provisioning/dashboards/opscentre.yml      at /etc/grafana/provisioning
    DIR/grafana/provisioning/alerting/opscentre.yml        (the KPI alert rules: alert_rules.py)
    DIR/grafana/dashboards/<folder title>/<uid>.json     mount at /var/lib/grafana/dashboards
                                                         (or OPSCENTRE_GRAFANA_DASHBOARDS_PATH)

The tree is made by a list of writers, each `writer(out_dir, settings) -> [paths written]`, so
other generators (alert rules, Prometheus and Alertmanager files) add themselves to WRITERS.
DIR belongs to the build: it is emptied first, and only if the build made it (or it is empty).
Same settings, same bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from opscentre.settings import Settings

from ..alerts import files
from . import alert_rules
from .boards import BOARDS
from .common import Folder, render, to_json
from .datasources import datasources, secret_variable
from .i18n import Texts

Writer = Callable[[Path, Settings], list[Path]]

GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS = Settings.grafana_dashboards_path  # the default
MARKER = ".opscentre-build"
HEADER = "# Written by `opscentre dashboards build`; edit the code in dashboards/grafana, not this file.\n"


class BuildError(ValueError):
    """The output directory cannot be used."""


def _literal(value):
    """Grafana expands $VAR in every value of a provisioning file: a literal $ is written $$."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {key: _literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item) for item in value]
    return value


def _write_yaml(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def folder_title(folder: Folder, settings: Settings) -> str:
    return Texts(settings.dashboard_language)(folder.title)


def _folders_in_use() -> list[Folder]:
    seen: dict[str, Folder] = {}
    for board in BOARDS:
        seen.setdefault(board.folder.uid, board.folder)
    return list(seen.values())


def write_datasources(out_dir: Path, settings: Settings) -> list[Path]:
    entries = []
    for source in datasources(settings):
        entry = {"orgId": 1, **_literal(source.fields()), "editable": False}
        if source.secrets:
            entry["secureJsonData"] = {key: f"${{{secret_variable(field)}}}" for key, field in source.secrets.items()}
        entries.append(entry)
    path = out_dir / "grafana/provisioning/datasources/opscentre.yml"
    return [_write_yaml(path, {"apiVersion": 1, "datasources": entries})]


def write_dashboard_providers(out_dir: Path, settings: Settings) -> list[Path]:
    # One provider per folder, so each folder gets the same uid as `push` gives it
    # (foldersFromFilesStructure would let Grafana make up folder uids).
    providers = []
    for folder in _folders_in_use():
        title = folder_title(folder, settings)
        providers.append(_literal({
            "name": folder.uid,
            "orgId": 1,
            "type": "file",
            "folder": title,
            "folderUid": folder.uid,
            "disableDeletion": False,
            "allowUiUpdates": False,
            "updateIntervalSeconds": 30,
            "options": {"path": f"{settings.grafana_dashboards_path.rstrip('/')}/{title}",
                        "foldersFromFilesStructure": False},
        }))
    path = out_dir / "grafana/provisioning/dashboards/opscentre.yml"
    return [_write_yaml(path, {"apiVersion": 1, "providers": providers})]


def write_boards(out_dir: Path, settings: Settings) -> list[Path]:
    written = []
    for board in BOARDS:
        path = out_dir / "grafana/dashboards" / folder_title(board.folder, settings) / f"{board.uid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_json(render(board, settings)), encoding="utf-8")
        written.append(path)
    return written


def write_alert_rules(out_dir: Path, settings: Settings) -> list[Path]:
    """Grafana's alerting file: the rule groups, each in its folder (by title, as files name them).

    Written as they are, not through _literal: Grafana reads a query's model and the annotations
    raw (their `$__toTime` and `{{ $labels.agency }}` must stay) and expands $VAR in the other
    fields (pkg/services/provisioning/alerting/rules_types.go), which hold no `$`."""
    groups = alert_rules.file_groups(settings)
    for group in groups:
        for rule in group["rules"]:
            expanded = [group["name"], group["folder"], rule["title"], rule["uid"], *rule["labels"].values()]
            if any("$" in value for value in expanded):
                raise BuildError(f"alert rule {rule['uid']}: a '$' where Grafana would expand it")
    path = out_dir / "grafana/provisioning/alerting/opscentre.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + files.dump({"apiVersion": 1, "groups": groups}), encoding="utf-8")  # SQL as blocks
    return [path]


WRITERS: list[Writer] = [write_datasources, write_dashboard_providers, write_boards, write_alert_rules]


def _check_out(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir} is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise BuildError(f"{out_dir} is not empty and was not written by a build: choose an empty or new directory")


def build(out_dir: Path, settings: Settings, writers: list[Writer] | None = None) -> list[Path]:
    """Write the whole tree into out_dir (emptied first); returns the files written."""
    _check_out(out_dir)
    # Everything is generated beside out_dir before it is touched: a failing writer leaves the old tree.
    staging = out_dir.with_name(f".{out_dir.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        for writer in WRITERS if writers is None else writers:
            writer(staging, settings)
        (staging / MARKER).write_text("This directory is rebuilt by `opscentre dashboards build`.\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(path for path in out_dir.rglob("*") if path.is_file() and path.name != MARKER)
