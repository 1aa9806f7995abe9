"""The Grafana boards as code: `opscentre dashboards build` and `opscentre dashboards push`.

plugin.py      the ClickHouse plugin's version, query type and connection settings
datasources.py the data sources (uids the boards and alert rules refer to)
i18n.py        Vietnamese (default) and English texts
common.py      folders, the board record, wall-screen defaults, panel helpers
thresholds.py  the numbers boards colour by
sql.py         the read side's exact periods and instants in SQL, from Grafana's time macros
kpi_sql.py     the KPI queries of the ClickHouse boards and their alert rules, each named
reference.py   provinces, agency and procedure names for the ClickHouse boards
boards/        one module per board
queries.py     every ClickHouse query of the boards by name (tests, bench/read_scale.py)
alert_rules.py the Grafana-managed KPI alert rules
provisioning.py the Grafana provisioning tree (`build`)
push.py        folders, data sources and boards into a running Grafana (`push`)
"""
