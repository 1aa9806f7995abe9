"""Latency and memory of the worker under a steady load.

    .venv/bin/python bench/latency_memory.py [--rate 5000] [--duration 1400] [--warmup 720] [--single-events]

Runs a Tansu broker, clickhouse-server, one `opscentre worker` and
`opscentre simulate --rate R --steady` for --duration seconds (with --single-events, the same
traffic sent live by librdkafka, one event a record, as a third party sends it). Meanwhile it sends one
probe event a second (a single record, as a third party would) and times how
long until that event is in ClickHouse, i.e. visible to `opscentre kpi`; it
samples the worker's resident memory (main and writer processes) every 10 s.
At the end it prints the probe latency percentiles, the worker's own
end-to-end histogram, the memory series, the events accepted a second and the
cores the broker, ClickHouse, the worker and the load generator each used over
the run, and the bytes the de-duplication memory costs per remembered id.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kafka import KafkaProducer  # noqa: E402

from bench.common import CpuUse, paced_single_events  # noqa: E402

from opscentre.clickhouse import connect, quote  # noqa: E402
from opscentre.embedded import EmbeddedBroker, free_port  # noqa: E402
from opscentre.kafka import ensure_topics  # noqa: E402
from opscentre.local import scrape  # noqa: E402
from producers.simulator import rfc3339  # noqa: E402
from sinks.clickhouse_sink import RAW_KEYS  # noqa: E402
from streams.dedup import RecentIds  # noqa: E402
from streams.overdue import OpenItem, OverdueTracker  # noqa: E402
from tests.harness import ClickHouseServer, Pipeline  # noqa: E402


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory (MB) of a process, and of all its children together."""
    def of(p: int) -> float:
        for line in open(f"/proc/{p}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        children += [int(p) for p in open(f"/proc/{pid}/task/{task}/children").read().split()]
    return of(pid), sum(of(p) for p in children)


def latency_buckets(port: int) -> list:
    """[(upper bound, cumulative count)] of opscentre_stream_end_to_end_seconds."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "opscentre_stream_end_to_end_seconds":
            return sorted((float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket"))
    return []


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dedup_bytes_per_id(count: int = 3_000_000) -> float:
    """Memory per remembered id at 5,000 ids/s over one default horizon (600 s), records of 500."""
    horizon_ms = 600_000
    start_ms = 1_795_000_000_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    memory = RecentIds(horizon_ms=horizon_ms)
    for first in range(0, count, 500):
        memory.admit([f"ev-{i % 97}-{i:x}" for i in range(first, first + 500)], start_ms + first // 5)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(memory)


def tracker_bytes_per_item(count: int = 300_000) -> float:
    """Bytes an open item costs the overdue tracker (its segments; ids like 000.00.21.H56-241124-000001)."""
    tracker = OverdueTracker(horizon_ms=600_000)
    tracker.advance(1_000)
    tracker.load([OpenItem(2_000 + i, "dossier", f"000.00.21.H56-241124-{i:06d}", "01", "STP", "1.004227")
                  for i in range(count)], 10_000_000)
    return tracker.nbytes / len(tracker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--duration", type=float, default=1400)
    parser.add_argument("--warmup", type=float, default=720,
                        help="seconds before the memory spread is measured: the de-duplication memory fills "
                             "for 1.2 horizons (720 s by default)")
    parser.add_argument("--single-events", action="store_true",
                        help="the load as single-event records sent by librdkafka (a third party), not the "
                             "simulator's batches (needs the bench extra)")
    args = parser.parse_args()

    broker = EmbeddedBroker().start()
    server = ClickHouseServer().start()
    pipeline = Pipeline(broker.bootstrap, server.url("latency"), Path(tempfile.mkdtemp()))
    settings = pipeline.settings
    ensure_topics(settings)
    worker = pipeline.start_worker()
    store = connect(settings.clickhouse)
    if args.single_events:
        simulator = multiprocessing.get_context("spawn").Process(
            target=paced_single_events, args=(settings, args.rate, args.duration, 5), daemon=True)
        simulator.start()
        simulator.wait = simulator.join
    else:
        sim_env = dict(pipeline.env, OPSCENTRE_METRICS_ADDR=f"127.0.0.1:{free_port()}")
        simulator = subprocess.Popen(
            [sys.executable, "-m", "opscentre.cli", "simulate", "--rate", str(args.rate), "--duration",
             str(args.duration), "--seed", "5", "--steady"], env=sim_env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1, linger_ms=0)
    latencies, memory = [], []
    stop = threading.Event()
    cpu = CpuUse({"broker": broker.process.pid, "ClickHouse": server.process.pid, "worker": worker.process.pid,
                  "load": simulator.pid}, interval_s=1.0)
    accepted_at: list = []  # (monotonic s, events accepted so far)

    def sample_memory():
        started = time.monotonic()
        while not stop.wait(10):
            main, writer = rss_mb(worker.process.pid)
            memory.append((round(time.monotonic() - started), round(main + writer, 1), round(main, 1), round(writer, 1)))
            try:
                accepted_at.append((time.monotonic(), scrape(worker.metrics_port).get("opscentre_stream_events_valid_total", 0)))
            except OSError:
                pass

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    time.sleep(8)  # worker joins the group
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < args.duration - 10:
        n += 1
        probe = {
            "event_id": f"probe-{n}", "event_type": "document.exchanged", "occurred_at": rfc3339(int(time.time() * 1000)),
            "province": "01", "agency": "STP", "source": "probe", "document_id": f"probe-{n}", "direction": "sent",
        }
        sent, sent_wall = time.monotonic(), time.time()
        producer.send(settings.service_topic, key=probe["document_id"].encode(), value=json.dumps(probe).encode())
        producer.flush()
        while time.monotonic() - sent < 30:
            # The sorting key's prefix (hour, province, event_type) keeps this a small read: a scan
            # of every event_id twenty times a second would load the server being measured.
            found = store.query(
                f"SELECT count() FROM {store.table('service_events')} WHERE "
                f"{RAW_KEYS['service_events'].between((int(sent_wall) - 1) * 1000, int(time.time() + 60) * 1000)} "
                f"AND province = '01' "
                f"AND event_type = 'document.exchanged' AND occurred_at >= toDateTime({int(sent_wall) - 1}) "
                f"AND event_id = {quote(probe['event_id'])}")
            if found[0][0]:
                latencies.append(time.monotonic() - sent)
                break
            time.sleep(0.02)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - sent)))
    simulator.wait()
    stop.set()
    cpu.stop()
    metrics = scrape(worker.metrics_port)
    histogram = latency_buckets(worker.metrics_port)
    worker.stop()
    server.stop()
    broker.stop()

    accepted = metrics.get("opscentre_stream_events_valid_total", 0)
    kind = "single-event records (librdkafka)" if args.single_events else "the simulator's batches"
    print(f"load: {args.rate:g} events/s as {kind} for {args.duration:g}s; worker accepted {accepted:,.0f} events")
    if latencies:
        print(f"probe produced → visible in ClickHouse ({len(latencies)} probes): "
              f"p50 {percentile(latencies, 0.5):.2f}s  p99 {percentile(latencies, 0.99):.2f}s  max {max(latencies):.2f}s")
    if histogram:
        total = histogram[-1][1]
        p99 = next(bound for bound, count in histogram if count >= 0.99 * total)
        p50 = next(bound for bound, count in histogram if count >= 0.5 * total)
        print(f"worker histogram, record produced → rows written ({total:,.0f} records): p50 ≤ {p50:g}s, p99 ≤ {p99:g}s")
    print("memory (s, MB RSS worker incl. writer, main process, writer process):", memory)
    for column, name in ((1, "worker incl. writer"), (2, "main process"), (3, "writer process")):
        steady = [sample[column] for sample in memory if sample[0] >= args.warmup]
        if len(steady) > 1:
            print(f"{name} after {args.warmup:g}s: min {min(steady)} MB, max {max(steady)} MB, "
                  f"spread {100 * (max(steady) - min(steady)) / min(steady):.1f}% of min")
    window = max(10.0, args.duration / 7)
    print(f"\nper {window:.0f} s: events accepted a second, and the cores each process used (2 on this machine; "
          "the load generator sends at the rate asked while it can)")
    print("| from s | accepted/s | broker | ClickHouse | worker (incl. writer) | load generator | machine |")
    print("|---|---|---|---|---|---|---|")
    for (t0, before), (t1, after) in zip(accepted_at[::max(1, round(window / 10))],
                                         accepted_at[max(1, round(window / 10))::max(1, round(window / 10))]):
        used = cpu.between(t0, t1)
        print(f"| {t0 - accepted_at[0][0]:.0f} | {(after - before) / (t1 - t0):,.0f} | "
              + " | ".join(f"{used.get(name, 0.0) / (t1 - t0):.2f}" for name in ("broker", "ClickHouse", "worker", "load",
                                                                                  "machine")) + " |")
    print(f"open items tracked at the end: {metrics.get('opscentre_stream_open_items_tracked', 0):,.0f}")
    print(f"de-duplication memory: {dedup_bytes_per_id():.0f} bytes per remembered id")
    print(f"overdue tracker: {tracker_bytes_per_item():.0f} bytes per open item (27-byte ids)")


if __name__ == "__main__":
    main()
