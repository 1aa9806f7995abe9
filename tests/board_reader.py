"""Run a board's SQL as its data source would: the board's database as the default one (the
queries name tables without a database, as with the data source's defaultDatabase), read-only,
and with the max_execution_time the ClickHouse plugin sends with every query.

Grafana cannot run here: this stands in for its ClickHouse data source on ClickHouse 18.16 (the
native protocol; readonly=2, which the `grafana` user has there) and on chDB (a child process:
chDB opens one path per process).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlparse

PLUGIN_SETTINGS = {"max_execution_time": 60}


class BoardReader:
    def __init__(self, url: str):
        parsed = urlparse(url)
        self.kind = parsed.scheme
        if self.kind == "chdb":
            from opscentre.clickhouse import ChdbStore

            store = ChdbStore(url)
            self.database = store.database
            self._session = store._session
            self._session.query(f"USE {self.database}")
        else:
            from clickhouse_driver import Client

            self.database = unquote(parsed.path.lstrip("/"))
            self._client = Client(host=parsed.hostname, port=parsed.port or 9000,
                                  user=unquote(parsed.username or "default"), password=unquote(parsed.password or ""),
                                  database=self.database, send_receive_timeout=60,
                                  settings={"readonly": 2, **PLUGIN_SETTINGS})

    def run(self, sql: str) -> tuple[list[tuple[str, str]], list[tuple]]:
        """(column (name, type) pairs, rows) of a query; a refused query raises StoreError."""
        from opscentre.clickhouse import StoreError

        try:
            return self._run(sql)
        except Exception as exc:  # noqa: BLE001 (clickhouse-driver's errors, chDB's RuntimeError: one kind here)
            # clickhouse-driver puts the code on a line of its own: code and message, without the stack
            lines = [line for line in str(exc).strip().splitlines() if line.strip()][:2]
            raise StoreError(" ".join(lines) or type(exc).__name__) from None

    def _run(self, sql: str) -> tuple[list[tuple[str, str]], list[tuple]]:
        if self.kind == "chdb":
            settings = ", ".join(f"{k} = {v}" for k, v in PLUGIN_SETTINGS.items())
            result = self._session.query(f"{sql}\nSETTINGS {settings}, output_format_json_quote_64bit_integers = 0",
                                         "JSONCompact")
            raw = result.bytes()
            if not raw:
                return [], []
            answer = json.loads(raw)
            return [(c["name"], c["type"]) for c in answer["meta"]], [tuple(row) for row in answer["data"]]
        rows, columns = self._client.execute(sql, with_column_types=True)
        return list(columns), [tuple(row) for row in rows]

    def rows(self, sql: str) -> list[tuple]:
        return self.run(sql)[1]


def database_of(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "chdb":
        return parse_qs(parsed.query).get("database", ["opscentre"])[0]
    return unquote(parsed.path.lstrip("/"))
