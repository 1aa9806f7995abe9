"""Real servers for tests and benchmarks, each on free loopback ports.

- Kafka protocol: `OPSCENTRE_KAFKA` if set, else a Tansu broker (opscentre.embedded).
- ClickHouse: `OPSCENTRE_TEST_CLICKHOUSE` (clickhouse://...) if set, else Debian's
  clickhouse-server started in a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from opscentre.embedded import free_port, wait_for_port

CLICKHOUSE_BINARY = shutil.which("clickhouse-server") or "/usr/bin/clickhouse-server"


class ClickHouseServer:
    """Debian's clickhouse-server in a temp dir; `url(db)` for the native protocol."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="opscentre-ch-")
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.interserver_port = free_port()
        self.process = None
        self.cluster: dict = {}  # name -> the tcp ports of its shards (remote_servers), set before start()
        self.replicas: list = []  # the tcp ports of one shard's replicas (remote_servers, internal replication)
        self.zookeeper_port: int | None = None
        self.macros: dict = {}  # {shard: ..., replica: ...}

    def start(self, timeout_s: float = 60.0) -> "ClickHouseServer":
        config = open("/etc/clickhouse-server/config.xml", encoding="utf-8").read()
        replacements = {
            r"<tcp_port>\d+</tcp_port>": f"<tcp_port>{self.tcp_port}</tcp_port>",
            r"<http_port>\d+</http_port>": f"<http_port>{self.http_port}</http_port>",
            r"<interserver_http_port>\d+</interserver_http_port>":
                f"<interserver_http_port>{self.interserver_port}</interserver_http_port>",
            r"<path>[^<]*</path>": f"<path>{self.dir}/data/</path>",
            r"<tmp_path>[^<]*</tmp_path>": f"<tmp_path>{self.dir}/tmp/</tmp_path>",
            r"<user_files_path>[^<]*</user_files_path>": f"<user_files_path>{self.dir}/user_files/</user_files_path>",
            r"<format_schema_path>[^<]*</format_schema_path>": f"<format_schema_path>{self.dir}/format_schemas/</format_schema_path>",
            r"<log>[^<]*</log>": f"<log>{self.dir}/server.log</log>",
            r"<errorlog>[^<]*</errorlog>": f"<errorlog>{self.dir}/server.err.log</errorlog>",
            r"<level>[^<]*</level>": "<level>warning</level>",
        }
        for pattern, value in replacements.items():
            config = re.sub(pattern, value, config)
        if self.cluster:
            shards = "".join(
                f"<{name}>" + "".join(f"<shard><replica><host>127.0.0.1</host><port>{port}</port></replica></shard>"
                                      for port in ports) + f"</{name}>"
                for name, ports in self.cluster.items())
            config = re.sub(r"(<remote_servers[^>]*>)", r"\1" + shards, config, count=1)
        if self.replicas:
            replicas = "".join(f"<replica><host>127.0.0.1</host><port>{port}</port></replica>" for port in self.replicas)
            shard = f"<opscentre><shard><internal_replication>true</internal_replication>{replicas}</shard></opscentre>"
            config = re.sub(r"(<remote_servers[^>]*>)", r"\1" + shard, config, count=1)
        if self.zookeeper_port:
            config = re.sub(r"<zookeeper incl=[^>]*/>", "<zookeeper><node><host>127.0.0.1</host>"
                            f"<port>{self.zookeeper_port}</port></node></zookeeper>", config)
            config = re.sub(r"<macros incl=[^>]*/>", "<macros>" + "".join(
                f"<{key}>{value}</{key}>" for key, value in self.macros.items()) + "</macros>", config)
        # Loopback only, IPv4 (the machine may lack IPv6).
        config = re.sub(r"<listen_host>[^<]*</listen_host>", "", config)
        config = config.replace("<tcp_port>", "<listen_host>127.0.0.1</listen_host>\n    <tcp_port>", 1)
        config = re.sub(r"<tcp_port_secure>\d+</tcp_port_secure>", "", config)
        config = re.sub(r"<https_port>\d+</https_port>", "", config)
        config = re.sub(r"<mysql_port>\d+</mysql_port>", "", config)
        with open(f"{self.dir}/config.xml", "w", encoding="utf-8") as handle:
            handle.write(config)
        shutil.copy("/etc/clickhouse-server/users.xml", f"{self.dir}/users.xml")
        self.process = subprocess.Popen(
            [CLICKHOUSE_BINARY, f"--config-file={self.dir}/config.xml"],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{self.dir}/stderr.log", "wb"),
            cwd=self.dir,
        )
        wait_for_port(self.tcp_port, timeout_s, self.process, f"{self.dir}/stderr.log")
        return self

    def url(self, database: str = "opscentre") -> str:
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}/{database}"

    def stop(self, keep_data: bool = False) -> None:
        """A server whose data is kept shuts down cleanly; one whose data goes is killed at once: a
        clean shutdown of a throwaway server buys nothing, and on a loaded machine each of a test
        session's servers could take up to 20 s of its last test's teardown (15-66 s measured)."""
        if self.process and self.process.poll() is None:
            if keep_data:
                self.process.terminate()
                try:
                    self.process.wait(20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            else:
                self.process.kill()
            self.process.wait()
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class WorkerProcess:
    """`opscentre worker` as a child process."""

    def __init__(self, env: dict, log_path: str):
        self.env = env
        self.log_path = log_path
        self.process = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "opscentre.cli", "-v", "worker"],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            cwd=os.path.dirname(self.log_path),  # Faust makes its data directory there
        )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 30.0) -> None:
        if self.running():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return open(self.log_path, encoding="utf-8", errors="replace").read()[-4000:]


class Pipeline:
    """One test's topics, group and database, with helpers to run workers and read results."""

    def __init__(self, bootstrap: str, clickhouse_url: str, tmp_path):
        self.prefix = unique_name("oc")
        self.tmp_path = tmp_path
        self.env = dict(
            os.environ,
            OPSCENTRE_KAFKA=bootstrap,
            OPSCENTRE_CLICKHOUSE=clickhouse_url,
            OPSCENTRE_TOPIC_PREFIX=self.prefix,
            OPSCENTRE_CONSUMER_GROUP=f"{self.prefix}-worker",
            OPSCENTRE_PSEUDONYM_KEY="test-key",
            OPSCENTRE_GROUP_SESSION_TIMEOUT_S="6",
            OPSCENTRE_GROUP_REBALANCE_TIMEOUT_S="5",
            OPSCENTRE_GROUP_HEARTBEAT_S="1",
            OPSCENTRE_FLUSH_INTERVAL_S="0.5",
            OPSCENTRE_PARTITIONS="4",
        )
        self.workers: list[WorkerProcess] = []
        self.settings = self._settings()

    def _settings(self):
        from opscentre.settings import Settings

        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return Settings.from_env()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def use_clickhouse(self, url: str) -> None:
        self.env["OPSCENTRE_CLICKHOUSE"] = url
        self.settings = self._settings()

    def start_worker(self) -> WorkerProcess:
        from opscentre.embedded import free_port

        env = dict(self.env, OPSCENTRE_METRICS_ADDR=f"127.0.0.1:{free_port()}")
        worker = WorkerProcess(env, str(self.tmp_path / f"worker{len(self.workers)}.log")).start()
        worker.metrics_port = int(env["OPSCENTRE_METRICS_ADDR"].rsplit(":", 1)[1])
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def store(self):
        from opscentre.clickhouse import connect

        return connect(self.settings.require_clickhouse())

    def metrics(self, worker: WorkerProcess) -> dict:
        """The worker's /metrics samples; waits while the endpoint does not answer (not started yet,
        or slower than scrape's 1 s timeout on a loaded machine)."""
        from opscentre.local import scrape

        answers = []
        self.wait_for(lambda: answers.append(scrape(worker.metrics_port)) or answers[-1], what="the worker's /metrics")
        return answers[-1]

    def wait_for(self, predicate, timeout_s: float = 90.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        last_error = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception as exc:  # tables may not exist yet
                last_error = exc
            for worker in self.workers:
                if worker.process.poll() not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                    raise AssertionError(f"worker died: {worker.log()}")
            time.sleep(0.5)
        logs = "\n".join(w.log() for w in self.workers)
        raise AssertionError(f"timed out waiting for {what} (last error: {last_error})\n{logs}")


ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"


class ZooKeeperServer:
    """Debian's ZooKeeper 3.8, standalone, in a temporary directory (for ClickHouse replication)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="opscentre-zk-")
        self.port = free_port()
        self.process = None

    def start(self, timeout_s: float = 60.0) -> "ZooKeeperServer":
        with open(f"{self.dir}/zoo.cfg", "w", encoding="utf-8") as handle:
            handle.write(f"tickTime=500\ndataDir={self.dir}/data\nclientPort={self.port}\n"
                         "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n")
        self.process = subprocess.Popen(
            ["java", "-cp", f"{ZOOKEEPER_JAR}:/usr/share/java/*", f"-Dzookeeper.log.dir={self.dir}",
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", f"{self.dir}/zoo.cfg"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/stderr.log", "wb"), cwd=self.dir)
        wait_for_port(self.port, timeout_s, self.process, f"{self.dir}/stderr.log")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)
