"""One way to talk to ClickHouse: a server over the native protocol, or chDB in-process.

`OPSCENTRE_CLICKHOUSE` selects the backend:
  clickhouse://user:password@host:9000/database   (clickhouse-driver, native protocol)
  chdb:///path/to/dir[?database=name]            (embedded ClickHouse, one process at a time)

Both backends take columnar inserts and return rows as tuples of plain
Python values; queries are written so that they return numbers and strings
only (times as epoch seconds), which keeps results identical across the two.
"""

from __future__ import annotations

import json
import os
import threading
from urllib.parse import parse_qs, unquote, urlparse

IDENTIFIER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class StoreError(RuntimeError):
    """A ClickHouse statement failed."""


class StoreUnavailable(StoreError):
    """ClickHouse could not be reached or opened."""


def quote(value) -> str:
    """A SQL literal for a Python value (strings escaped the ClickHouse way)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _check_identifier(name: str) -> str:
    if not name or not set(name) <= IDENTIFIER_CHARS:
        raise StoreError(f"invalid ClickHouse database name {name!r} (letters, digits and _ only)")
    return name


class Store:
    """Common interface; see NativeStore and ChdbStore."""

    url: str
    database: str
    cluster: str | None = None  # the remote_servers cluster the tables are sharded over (NativeStore)

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"

    def local(self, name: str) -> str:
        """The table holding this node's rows: `name` itself, or on a cluster `name_local` (the table
        `name` is then the Distributed one over every shard)."""
        return f"{self.database}.{name}_local" if self.cluster else self.table(name)

    def nodes(self) -> list:
        """A store on each node, for what runs node by node: DDL, mutations, partition drops."""
        return [self]

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple]:
        raise NotImplementedError

    def insert(self, table: str, columns: list[str], data: list) -> None:
        """Insert column-oriented data (one sequence per column, list or tuple) into database.table."""
        raise NotImplementedError

    def server_version(self) -> tuple[int, ...]:
        (version,) = self.query("SELECT version()")[0]
        return tuple(int(p) for p in version.split(".") if p.isdigit())

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.url


class NativeStore(Store):
    def __init__(self, url: str, timeout_s: float = 30.0):
        from clickhouse_driver import Client

        parsed = urlparse(url)
        self.url = url
        self.timeout_s = timeout_s
        self.database = _check_identifier(unquote(parsed.path.lstrip("/")) or "default")
        cluster = parse_qs(parsed.query).get("cluster", [None])[0]
        self.cluster = _check_identifier(cluster) if cluster else None
        self._nodes = None
        settings = {"insert_block_size": 1_048_576}
        if self.cluster:
            # A write is on its shard when it returns (the rollups read it next), and a subquery on a
            # Distributed table runs on each shard's local table: every table is sharded by source
            # partition, so an item's rows, and their subqueries', are on one shard.
            settings.update(insert_distributed_sync=1, distributed_product_mode="local")
        self._lock = threading.Lock()
        self._client = Client(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 9000,
            user=unquote(parsed.username or "default"),
            password=unquote(parsed.password or ""),
            database="default",
            connect_timeout=5,
            send_receive_timeout=timeout_s,
            sync_request_timeout=5,
            settings=settings,
        )
        self._insert_settings: dict | None = None

    def describe(self) -> str:
        parsed = urlparse(self.url)
        where = f"clickhouse://{parsed.hostname}:{parsed.port or 9000}/{self.database}"
        return where + (f" (cluster {self.cluster})" if self.cluster else "")

    def nodes(self) -> list:
        if not self.cluster:
            return [self]
        if self._nodes is None:
            self._nodes = self._cluster_nodes()
        return self._nodes

    def _cluster_nodes(self) -> list:
        hosts = self.query(f"SELECT host_address, port FROM system.clusters WHERE cluster = {quote(self.cluster)} "
                           "ORDER BY shard_num, replica_num")
        if not hosts:
            raise StoreError(f"ClickHouse at {self.describe()} has no cluster {self.cluster!r} in its remote_servers")
        parsed = urlparse(self.url)
        credentials = parsed.netloc.rpartition("@")[0]
        nodes = []
        for host, port in hosts:
            node = NativeStore(parsed._replace(netloc=f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}")
                               .geturl(), self.timeout_s)
            node._nodes = [node]  # a node's own tables: local() names them, nodes() is itself
            nodes.append(node)
        return nodes

    def replicated(self) -> bool:
        """Whether a shard of the cluster has more than one replica (Replicated engines then)."""
        (replicas,) = self.query(f"SELECT max(replica_num) FROM system.clusters WHERE cluster = {quote(self.cluster)}")[0]
        return int(replicas or 0) > 1

    def _run(self, *args, **kwargs):
        from clickhouse_driver import errors

        with self._lock:
            try:
                return self._client.execute(*args, **kwargs)
            except (errors.NetworkError, errors.SocketTimeoutError, OSError, EOFError) as exc:
                self._client.disconnect()
                raise StoreUnavailable(f"ClickHouse at {self.describe()} is not reachable: {exc}") from None
            except errors.Error as exc:
                self._client.disconnect()
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StoreError(message) from None

    def execute(self, sql: str) -> None:
        self._run(sql)

    def query(self, sql: str) -> list[tuple]:
        return [tuple(row) for row in self._run(sql)]

    def insert(self, table: str, columns: list[str], data: list) -> None:
        if not data or not data[0]:
            return
        if self._insert_settings is None:
            # Since 19.x a block that spans over 100 partitions (events of many months, say) is refused,
            # and the write would be retried forever; 18.16 has no such limit and refuses the setting.
            self._insert_settings = {"max_partitions_per_insert_block": 0} if self.server_version() >= (19,) else {}
        self._run(
            f"INSERT INTO {self.table(table)} ({', '.join(columns)}) VALUES",
            data,
            columnar=True,
            types_check=False,
            settings=self._insert_settings,
        )

    def close(self) -> None:
        self._client.disconnect()


ENDPOINT_FILE = ".opscentre-query-endpoint"

_CHDB_SESSIONS: dict[str, object] = {}
_CHDB_LOCK = threading.Lock()


class ChdbStore(Store):
    """Embedded ClickHouse; a path can be open in one process only (chDB's rule)."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        path = unquote(parsed.netloc + parsed.path) or "./var/clickhouse"
        self.path = os.path.abspath(path)
        self.url = url
        self.database = _check_identifier(parse_qs(parsed.query).get("database", ["opscentre"])[0])
        os.makedirs(self.path, exist_ok=True)
        with _CHDB_LOCK:
            session = _CHDB_SESSIONS.get(self.path)
            if session is None:
                try:
                    session = _open_chdb_quietly(self.path)
                except Exception as exc:  # chDB raises plain RuntimeError
                    raise ChdbBusy(self.path, str(exc).strip().splitlines()[-1]) from None
                _CHDB_SESSIONS[self.path] = session
        self._session = session
        self._lock = _CHDB_LOCK

    def describe(self) -> str:
        return f"chdb://{self.path}?database={self.database}"

    def _query(self, sql: str, fmt: str = "CSV"):
        with self._lock:
            try:
                return self._session.query(sql, fmt)
            except Exception as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StoreError(message) from None

    def execute(self, sql: str) -> None:
        self._query(sql)

    def query(self, sql: str) -> list[tuple]:
        result = self._query(sql + " SETTINGS output_format_json_quote_64bit_integers=0", "JSONCompact")
        raw = result.bytes()
        if not raw:
            return []
        return [tuple(row) for row in json.loads(raw)["data"]]

    def insert(self, table: str, columns: list[str], data: list) -> None:
        if not data or not data[0]:
            return
        import pyarrow as pa

        batch = pa.table({name: values for name, values in zip(columns, data)})  # noqa: F841 (read by chDB)
        # A block spanning over 100 partitions would be refused (see NativeStore.insert).
        self._query(f"INSERT INTO {self.table(table)} ({', '.join(columns)}) SELECT * FROM Python(batch) "
                    "SETTINGS max_partitions_per_insert_block = 0")


def _open_chdb_quietly(path: str):
    """Open a chDB session; its native code prints a failed open to fd 2, which we keep quiet
    (the exception carries the message)."""
    import chdb.session

    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        return chdb.session.Session(path)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class ChdbBusy(StoreUnavailable):
    def __init__(self, path: str, exc: Exception):
        super().__init__(
            f"embedded ClickHouse at {path} cannot be opened ({exc}); another process holds it "
            "and serves no queries"
        )
        self.path = path


class ChdbQueryServer:
    """Read-only SQL over HTTP on loopback, for a chDB path this process holds.

    chDB lets one process open a path; `opscentre kpi` in another terminal
    reads through this while `opscentre worker` (or `run`) holds ./var.
    """

    def __init__(self, store: "ChdbStore"):
        import http.server
        import socketserver

        owner = store

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                    body, status = {"error": "read-only: SELECT queries only"}, 400
                else:
                    try:
                        body, status = {"rows": owner.query(sql)}, 200
                    except StoreError as exc:
                        body, status = {"error": str(exc)}, 400
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint_path = os.path.join(store.path, ENDPOINT_FILE)
        with open(self.endpoint_path, "w") as handle:
            handle.write(f"127.0.0.1:{self.server.server_address[1]}")
        threading.Thread(target=self.server.serve_forever, name="chdb-queries", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        try:
            os.unlink(self.endpoint_path)
        except OSError:
            pass


class ChdbRemote(Store):
    """Queries to a chDB path held by another opscentre process, through its ChdbQueryServer."""

    def __init__(self, url: str, path: str, address: str):
        self.url = url
        self.path = path
        self.address = address
        self.database = _check_identifier(parse_qs(urlparse(url).query).get("database", ["opscentre"])[0])

    def describe(self) -> str:
        return f"chdb://{self.path}?database={self.database} (through the process holding it, {self.address})"

    def query(self, sql: str) -> list[tuple]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://{self.address}/", data=sql.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return [tuple(row) for row in json.loads(response.read())["rows"]]
        except urllib.error.HTTPError as exc:
            raise StoreError(json.loads(exc.read()).get("error", str(exc))) from None
        except OSError as exc:
            raise StoreUnavailable(f"the process holding {self.path} does not answer: {exc}") from None

    def execute(self, sql: str) -> None:
        raise StoreError(f"{self.path} is held by another process: read-only access")

    def insert(self, table: str, columns: list[str], data: list) -> None:
        self.execute("")


def with_database(url: str, database: str) -> str:
    """The same server (or chDB path) with another database."""
    _check_identifier(database)
    parsed = urlparse(url)
    if parsed.scheme == "chdb":
        return parsed._replace(query=f"database={database}").geturl()
    return parsed._replace(path="/" + database).geturl()


def connect(url: str, timeout_s: float = 30.0) -> Store:
    """Open the store an `OPSCENTRE_CLICKHOUSE` URL names."""
    scheme = urlparse(url).scheme
    if scheme in ("clickhouse", "tcp"):
        return NativeStore(url, timeout_s)
    if scheme == "chdb":
        try:
            return ChdbStore(url)
        except ChdbBusy as busy:
            try:
                address = open(os.path.join(busy.path, ENDPOINT_FILE)).read().strip()
            except OSError:
                raise busy from None
            return ChdbRemote(url, busy.path, address)
    raise StoreError(f"OPSCENTRE_CLICKHOUSE: unsupported scheme {scheme!r} (use clickhouse:// or chdb://)")
