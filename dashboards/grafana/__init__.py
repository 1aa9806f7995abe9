"""The Grafana boards as code: `opscentre dashboards build` and `opscentre dashboards push`.

plugin.py      the ClickHouse plugin's version, query type and connection settings
datasources.py the data sources (uids the boards and alert rules refer to)
i18n.py        Vietnamese (default) and English texts
common.py      folders, the board record, wall-screen defaults, panel helpers
thresholds.py  the numbers boards colour by
boards/        one module per board
provisioning.py the Grafana provisioning tree (`build`)
push.py        folders, data sources and boards into a running Grafana (`push`)
"""
