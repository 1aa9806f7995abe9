"""Readers of ClickHouse: KPI queries (shared by the CLI and the Grafana boards)."""
