"""Alerting as code: the pipeline's Prometheus rules and the Alertmanager routing, from the config."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from . import alertmanager, prometheus_rules


def write(out_dir, config: Config | None = None) -> list[Path]:
    """Every alerting file under out_dir: prometheus/ (config, rules) and alertmanager/ (config, start.sh)."""
    config = Config.from_settings() if config is None else config
    return prometheus_rules.write(out_dir, config) + alertmanager.write(out_dir, config)
