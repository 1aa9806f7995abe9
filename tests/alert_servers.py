"""Debian's Prometheus and Alertmanager on free loopback ports, and a receiver that records requests.

The receiver stands in for Telegram's Bot API and for a paging gateway (a webhook): it answers
`sendMessage` as Telegram does and records every request, so a test sees what Alertmanager sent,
to which path, with which headers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opscentre.embedded import free_port

ALERTMANAGER_BINARY = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
PROMETHEUS_BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"


class Recorder:
    """An HTTP server keeping (method, path, headers, body) of every request."""

    def __init__(self):
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                reply = b"{}"
                if self.path.endswith("/sendMessage"):
                    reply = json.dumps({"ok": True, "result": {"message_id": len(recorder.requests),
                                                               "chat": {"id": 1}, "date": 0}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout_s: float = 30.0, what: str = "a request") -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [r for r in list(self.requests) if predicate(r)]
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout_s:g} s; got {[r['path'] for r in self.requests]}")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _tail(log_path) -> str:
    return Path(log_path).read_text(encoding="utf-8", errors="replace")[-2000:]


def _wait_ready(process: subprocess.Popen, url: str, log_path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited ({process.returncode}): {_tail(log_path)}")
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout_s:g} s: {_tail(log_path)}")


class Server:
    """A Prometheus or Alertmanager process; `url`, `get(path)`, `post(path, data)`."""

    def __init__(self, command: list[str], port: int, log_path, env: dict | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "ab") as log:  # a restarted server adds to its log
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})
        try:
            _wait_ready(self.process, self.url, log_path)
        except AssertionError:
            self.stop()
            raise

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, data) -> int:
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    def log(self) -> str:
        return Path(self.log_path).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_alertmanager(start_script, work_dir, port: int | None = None) -> Server:
    """Alertmanager through the generated start.sh (which puts the Telegram token in); given the
    port and work_dir of a stopped one, it comes back where it was, with its notification log."""
    port = port or free_port()
    storage = work_dir / "alertmanager-data"
    storage.mkdir(parents=True, exist_ok=True)
    return Server(
        ["sh", str(start_script), f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         f"--storage.path={storage}"],
        port, work_dir / "alertmanager.log",
        env={"ALERTMANAGER_BIN": ALERTMANAGER_BINARY, "ALERTMANAGER_RUNTIME_DIR": str(work_dir / "am-runtime")},
    )


def start_prometheus(config_file, work_dir) -> Server:
    port = free_port()
    return Server(
        [PROMETHEUS_BINARY, f"--config.file={config_file}", f"--storage.tsdb.path={work_dir / 'prometheus-data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        port, work_dir / "prometheus.log",
    )
