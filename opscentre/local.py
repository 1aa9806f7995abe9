"""`opscentre run`: broker, worker and simulator on one machine, with a live status line.

The broker is the embedded Tansu (memory only: empty at every start) unless
OPSCENTRE_KAFKA is set; ClickHouse is chDB under ./var unless
OPSCENTRE_CLICKHOUSE is set. Worker and simulator are child processes that
serve their own metrics; the status line is read from those endpoints.
Children die with this process (PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .embedded import EmbeddedBroker, free_port
from .kafka import ensure_topics
from .settings import Settings


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def scrape(port: int) -> dict:
    """{metric sample name: summed value} from a local /metrics endpoint; {} when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


class Status:
    def __init__(self):
        self.previous = None

    def line(self, producer: dict, worker: dict, now: float) -> str:
        produced = producer.get("opscentre_producer_events_total", 0.0)
        accepted = worker.get("opscentre_stream_events_valid_total", 0.0)
        rejected = worker.get("opscentre_stream_events_rejected_total", 0.0)
        lag = worker.get("opscentre_stream_consumer_lag", 0.0)
        last_window = worker.get("opscentre_stream_last_window_written_seconds", 0.0)
        rates = ("-", "-")
        if self.previous:
            then, p0, a0 = self.previous
            elapsed = max(now - then, 1e-6)
            rates = (f"{(produced - p0) / elapsed:,.0f}", f"{(accepted - a0) / elapsed:,.0f}")
        self.previous = (now, produced, accepted)
        window = time.strftime("%H:%M", time.localtime(last_window)) if last_window else "-"
        return (
            f"produced {rates[0]}/s ({produced:,.0f})  aggregated {rates[1]}/s ({accepted:,.0f})  "
            f"lag {lag:,.0f} records  rejected {rejected:,.0f}  last window {window}"
        )


def _events_sent(log_path: str) -> int | None:
    """The count from the simulator's last line, `simulate: sent N events`."""
    try:
        lines = open(log_path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("simulate: sent "):
            return int(line.split()[2])
    return None


def _pseudonym_key(settings: Settings, data_dir: str) -> str:
    if settings.pseudonym_key:
        return settings.pseudonym_key
    path = os.path.join(data_dir, "pseudonym.key")
    if not os.path.exists(path):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(secrets.token_hex(32))
    return open(path).read().strip()


def run_local(settings: Settings, rate: float, duration_s: float | None, seed: int | None,
              steady: bool = False) -> int:
    data_dir = os.path.abspath(settings.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    broker = None
    children: list[subprocess.Popen] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        kafka = settings.kafka
        if not kafka:
            broker = EmbeddedBroker(log_path=os.path.join(data_dir, "broker.log")).start()
            kafka = broker.bootstrap
        clickhouse = settings.clickhouse or f"chdb://{os.path.join(data_dir, 'clickhouse')}"
        host, worker_port = settings.metrics_host_port()
        producer_port = free_port()
        env = dict(
            os.environ,
            OPSCENTRE_KAFKA=kafka,
            OPSCENTRE_CLICKHOUSE=clickhouse,
            OPSCENTRE_PSEUDONYM_KEY=_pseudonym_key(settings, data_dir),
        )
        ensure_topics(settings.with_overrides(kafka=kafka))
        command = [sys.executable, "-m", "opscentre.cli"]

        def spawn(args, log_name, metrics_port):
            log = open(os.path.join(data_dir, log_name), "ab")
            child_env = dict(env, OPSCENTRE_METRICS_ADDR=f"{host}:{metrics_port}")
            process = subprocess.Popen(
                command + args, env=child_env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
            children.append(process)
            return process

        worker = spawn(["worker"], "worker.log", worker_port)
        sim_args = ["simulate", "--rate", str(rate), "--duration", str(duration_s or 10 ** 9)]
        if seed is not None:
            sim_args += ["--seed", str(seed)]
        if steady:
            sim_args.append("--steady")
        simulator = spawn(sim_args, "simulator.log", producer_port)
        print(
            f"opscentre run: broker {kafka}, ClickHouse {clickhouse}, metrics http://{host}:{worker_port}/metrics; "
            f"logs in {data_dir}; Ctrl-C to stop",
            file=sys.stderr,
        )
        status = Status()
        producer_metrics: dict = {}
        simulator_done_at = None
        interactive = sys.stderr.isatty()
        while not stopping:
            time.sleep(1.0)
            if worker.poll() is not None:
                print(f"\nopscentre run: worker exited with status {worker.returncode}; see {data_dir}/worker.log",
                      file=sys.stderr)
                return 1
            producer_metrics = scrape(producer_port) or producer_metrics
            worker_metrics = scrape(worker_port)
            line = status.line(producer_metrics, worker_metrics, time.monotonic())
            print(("\r" + line + "   ") if interactive else line, end="" if interactive else "\n",
                  file=sys.stderr, flush=True)
            if simulator.poll() is not None:
                # Lag cannot tell (Tansu under-reports end offsets): wait until the worker has
                # accounted for every event the simulator sent.
                simulator_done_at = simulator_done_at or time.monotonic()
                sent = _events_sent(os.path.join(data_dir, "simulator.log"))
                handled = sum(worker_metrics.get(name, 0.0) for name in (
                    "opscentre_stream_events_valid_total", "opscentre_stream_events_rejected_total",
                    "opscentre_stream_duplicates_dropped_total"))
                if (sent is not None and handled >= sent) or time.monotonic() - simulator_done_at > 120:
                    time.sleep(2 * settings.flush_interval_s)  # the last snapshot is written
                    break
        print("", file=sys.stderr)
        return 0
    finally:
        for process in reversed(children):  # simulator first, then the worker (it flushes on SIGTERM)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if broker:
            broker.stop()
        print("opscentre run: stopped", file=sys.stderr)
