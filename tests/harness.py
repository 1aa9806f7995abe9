"""Real servers for tests and benchmarks, each on free loopback ports.

- Kafka protocol: `OPSCENTRE_KAFKA` if set, else a Tansu broker (opscentre.embedded).
- ClickHouse: `OPSCENTRE_TEST_CLICKHOUSE` (clickhouse://...) if set, else Debian's
  clickhouse-server started in a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
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

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"
