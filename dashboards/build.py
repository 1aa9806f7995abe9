"""`opscentre dashboards build --out DIR`: everything the mixin generates, in one tree.

    DIR/grafana/...        data sources, dashboard providers, boards (dashboards/grafana/provisioning.py)
    DIR/prometheus/...     scrape configuration and rules (dashboards/alerts/prometheus_rules.py)
    DIR/alertmanager/...   routing tree and receivers (dashboards/alerts/alertmanager.py)

One command, same settings, same bytes: the production stack mounts this tree.
"""

from __future__ import annotations

from pathlib import Path

from opscentre.settings import Settings

from . import alerts
from .config import Config
from .grafana import provisioning


def write_alerting(out_dir: Path, settings: Settings) -> list[Path]:
    return alerts.write(out_dir, Config.from_settings(settings))


WRITERS = [*provisioning.WRITERS, write_alerting]


def build(out_dir: Path, settings: Settings) -> list[Path]:
    return provisioning.build(out_dir, settings, writers=WRITERS)
