"""Throughput of the worker against the baselines, on the same pre-produced data.

    .venv/bin/python bench/throughput.py [--events 400000] [--single-events 40000] [--time-limit 60] [--repeat 3]

Starts a Tansu broker and Debian's clickhouse-server on loopback (or uses
OPSCENTRE_KAFKA / OPSCENTRE_TEST_CLICKHOUSE), pre-produces service events twice
(as the project's batched records, and as single-event records like a third
party sends), then times, one after the other:

- the project's worker end to end: first record consumed → every event stored
  and its per-minute rows queryable;
- a plain kafka-python loop doing the worker's work (the project's processor and
  writer process, no Faust): what the framework costs;
- a plain kafka-python loop that only decodes and counts per minute (the bare limit);
- a naive Faust agent counting into a Table;
- Quix Streams with a 1-minute tumbling window.

The worker, naive Faust and Quix Streams also run on the single-event records, and the worker and
Quix Streams on the same events sent by librdkafka (confluent-kafka, its default partitioner), as
third-party systems send them.

Baselines that cannot finish within --time-limit report the rate they reached. With
--repeat N every row runs N times, in rounds, and the table shows each row's median run,
the range, and the worker's ratio to each baseline round by round.
Beside each rate it prints the CPU the machine spent per event over that row's timed
interval, split into ClickHouse, the broker and the rest (the measured code; for the
worker, its own process and its writer process), from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import replace  # noqa: E402

import msgspec  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.common import CpuUse, make_events, produce, produce_librdkafka  # noqa: E402
from opscentre.clickhouse import connect  # noqa: E402
from opscentre.embedded import EmbeddedBroker  # noqa: E402
from opscentre.events import AnyEvent, to_millis  # noqa: E402
from opscentre.kafka import topic_ids  # noqa: E402
from opscentre.provinces import load_provinces  # noqa: E402
from sinks.clickhouse_sink import ClickHouseSink  # noqa: E402
from sinks.schema import migrate  # noqa: E402
from sinks.writer_process import WriterProcess  # noqa: E402
from streams.processor import Processor  # noqa: E402
from tests.harness import ClickHouseServer, Pipeline  # noqa: E402


def stored(store) -> int:
    return int(store.query(f"SELECT count() FROM {store.table('service_events')}")[0][0])


def _worker_progress(port: int) -> tuple[float, float]:
    """(records consumed, raw service events stored) from the worker's metrics: polling them
    costs ClickHouse nothing, where a count() twenty times a second took ~7% of its CPU."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return 0.0, 0.0
    consumed = stored_rows = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "opscentre_stream_records_total":
                consumed += sample.value
            elif sample.name == "opscentre_sink_rows_written_total" and sample.labels.get("table") == "service_events":
                stored_rows += sample.value
    return consumed, stored_rows


def project_worker(bootstrap, clickhouse_url, events, per_record, cpu) -> dict:
    """per_record: events a record (batched by the project's producer), or "librdkafka" (single events)."""
    pipeline = Pipeline(bootstrap, clickhouse_url, Path(tempfile.mkdtemp()))
    if per_record == "librdkafka":
        produce_librdkafka(pipeline.settings, events)
    else:
        produce(pipeline.settings, events, per_record)
    worker = pipeline.start_worker()
    cpu.track("worker process", worker.process.pid, descendants=False)
    cpu.track("worker and writer", worker.process.pid)
    store = connect(pipeline.settings.clickhouse)
    first = None
    try:
        while True:
            consumed, written = _worker_progress(worker.metrics_port)
            if first is None and consumed > 0:
                first = time.monotonic()
            if first is not None and written >= len(events):
                break
            if not worker.running():
                raise RuntimeError(worker.log())
            # Each scrape costs the worker a few milliseconds of its main thread: poll often only
            # where the timing is decided, before the first record and near the end.
            time.sleep(0.05 if first is None or written >= 0.8 * len(events) else 0.5)
        seconds = time.monotonic() - first
        assert stored(store) >= len(events)
        minute_rows = store.query(f"SELECT count() FROM {store.table('service_minute')}")[0][0]
        assert minute_rows > 0
        return {"events": len(events), "seconds": seconds, "first": first}
    finally:
        worker.stop()


def _consumer(settings):
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.split(","), group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    partitions = [TopicPartition(settings.service_topic, p) for p in consumer.partitions_for_topic(settings.service_topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    return consumer


def plain_same_work(settings, clickhouse_url, total) -> dict:
    """kafka-python feeding the project's Processor; snapshots written by the writer process while
    the loop goes on, as in the worker: validation, de-duplication, raw events, exact rows."""
    settings = replace(settings, clickhouse=clickhouse_url)
    store = connect(clickhouse_url)
    migrate(store)
    processor = Processor(settings, topic_ids(settings.kafka, settings.event_topics), ClickHouseSink(store),
                          b"bench-key", load_provinces(None))
    writer = WriterProcess(clickhouse_url, 30.0)
    executor = ThreadPoolExecutor(max_workers=1)
    consumer = _consumer(settings)
    in_flight = None
    written = 0  # events in snapshots handed to the writer
    first = None
    last_snapshot = time.monotonic()

    def write(snapshot):
        writer.write(snapshot.batch)
        return snapshot

    try:
        while written < total:
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                if first is None:
                    first = time.monotonic()
                for record in records:
                    processor.process(record.topic, record.partition, record.offset, record.timestamp, record.value)
            if time.monotonic() - last_snapshot >= settings.flush_interval_s or written + processor.pending_events() >= total:
                if in_flight is not None:
                    processor.commit(in_flight.result())
                written += processor.pending_events()
                in_flight = executor.submit(write, processor.prepare())
                last_snapshot = time.monotonic()
        processor.commit(in_flight.result())
        return {"events": stored(store), "seconds": time.monotonic() - first, "first": first}
    finally:
        consumer.close()
        writer.close()
        executor.shutdown()


def plain_loop(settings, clickhouse_url, total) -> dict:
    """kafka-python, msgspec, a dict of counters, one insert at the end: no de-duplication, no exactness."""
    decode = msgspec.json.Decoder(list[AnyEvent] | AnyEvent).decode
    consumer = _consumer(settings)
    counts: dict = {}
    seen = 0
    first = None
    while seen < total:
        for records in consumer.poll(timeout_ms=500, max_records=5000).values():
            if first is None:
                first = time.monotonic()
            for record in records:
                decoded = decode(record.value)
                for event in decoded if type(decoded) is list else (decoded,):
                    key = (to_millis(event.occurred_at) // 60000 * 60, event.province, event.agency)
                    counts[key] = counts.get(key, 0) + 1
                    seen += 1
    store = connect(clickhouse_url)
    store.execute(f"CREATE DATABASE IF NOT EXISTS {store.database}")
    store.execute(f"CREATE TABLE IF NOT EXISTS {store.table('plain_minute')} (window_start DateTime, province String, "
                  "agency String, events UInt64) ENGINE = SummingMergeTree ORDER BY (province, agency, window_start)")
    rows = list(counts.items())
    store.insert("plain_minute", ["window_start", "province", "agency", "events"],
                 [[k[0] for k, _ in rows], [k[1] for k, _ in rows], [k[2] for k, _ in rows], [v for _, v in rows]])
    consumer.close()
    return {"events": seen, "seconds": time.monotonic() - first, "first": first}


def subprocess_baseline(script, settings, total, time_limit, name) -> dict:
    group = f"{settings.topic_prefix}-{name}"
    try:
        result = subprocess.run(
            [sys.executable, str(HERE / script), settings.kafka, settings.service_topic, group, str(total), str(time_limit)],
            capture_output=True, text=True, timeout=time_limit + 120,
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"no result within {exc.timeout:.0f}s (it consumed nothing it could report)"}
    for line in result.stdout.splitlines():
        if "{" in line:  # Faust prefixes terminal control codes
            return json.loads(line[line.index("{"):])
    return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1][:120]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--single-events", type=int, default=40_000)
    parser.add_argument("--per-record", type=int, default=500)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--only", type=_row_numbers, help="comma-separated row numbers to run, for quick comparisons")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every row; the table shows each row's median run and the range")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    # What each row runs: the servers, the data and `url` are set up below, before any row runs.
    rows = [
        ("project worker (end to end)", f"batched x{args.per_record}",
         lambda tag: project_worker(bootstrap, url(f"bench_worker{tag}"), service, args.per_record, cpu)),
        ("plain loop, worker's work", f"batched x{args.per_record}",
         lambda tag: plain_same_work(batched.settings, url(f"bench_plain_same{tag}"), len(service))),
        ("plain loop, decode and count", f"batched x{args.per_record}",
         lambda tag: plain_loop(batched.settings, url(f"bench_plain{tag}"), len(service))),
        ("naive Faust agent + Table", f"batched x{args.per_record}",
         lambda tag: subprocess_baseline("naive_faust.py", batched.settings, len(service), args.time_limit,
                                         f"faust{tag}")),
        ("Quix Streams tumbling window", f"batched x{args.per_record}",
         lambda tag: subprocess_baseline("quix_app.py", batched.settings, len(service), args.time_limit,
                                         f"quix{tag}")),
        ("project worker (end to end)", "single events",
         lambda tag: project_worker(bootstrap, url(f"bench_worker_single{tag}"), singles, 1, cpu)),
        ("naive Faust agent + Table", "single events",
         lambda tag: subprocess_baseline("naive_faust.py", single.settings, len(singles), args.time_limit,
                                         f"faust1{tag}")),
        ("Quix Streams tumbling window", "single events",
         lambda tag: subprocess_baseline("quix_app.py", single.settings, len(singles), args.time_limit,
                                         f"quix1{tag}")),
        ("project worker (end to end)", "librdkafka singles",
         lambda tag: project_worker(bootstrap, url(f"bench_worker_rd{tag}"), singles, "librdkafka", cpu)),
        ("Quix Streams tumbling window", "librdkafka singles",
         lambda tag: subprocess_baseline("quix_app.py", librdkafka.settings, len(singles), args.time_limit,
                                         f"quixrd{tag}")),
    ]
    unknown = sorted((args.only or set()) - set(range(1, len(rows) + 1)))
    if unknown:
        parser.error(f"--only: no row {', '.join(map(str, unknown))} (rows are 1-{len(rows)})")

    broker = server = None
    bootstrap = os.environ.get("OPSCENTRE_KAFKA")
    if not bootstrap:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    clickhouse = os.environ.get("OPSCENTRE_TEST_CLICKHOUSE")
    if not clickhouse:
        server = ClickHouseServer().start()
    url = (lambda db: f"{clickhouse.rstrip('/')}/{db}") if clickhouse else server.url

    cpu = CpuUse({"clickhouse": server.process.pid if server else None,
                  "broker": broker.process.pid if broker else None})
    service = [e for e in make_events(int(args.events * 1.07)) if e["event_type"] != "security.alert"][: args.events]
    singles = service[: args.single_events]
    runs: dict = {}  # row number -> (name, data, [outcome of each round])
    try:
        batched = Pipeline(bootstrap, url("bench_batched"), Path(tempfile.mkdtemp()))
        produce(batched.settings, service, args.per_record)
        single = Pipeline(bootstrap, url("bench_single"), Path(tempfile.mkdtemp()))
        produce(single.settings, singles, 1)
        librdkafka = Pipeline(bootstrap, url("bench_librdkafka"), Path(tempfile.mkdtemp()))
        produce_librdkafka(librdkafka.settings, singles)

        # Rounds, not a row's runs back to back: a drift of the machine's speed lands on every row.
        for round_number in range(args.repeat):
            tag = f"_{round_number}" if round_number else ""
            for number, (name, data, run) in enumerate(rows, start=1):
                if args.only and number not in args.only:
                    continue
                print(f"… {name} ({data}), round {round_number + 1} of {args.repeat}", file=sys.stderr, flush=True)
                outcome = run(tag)
                if "first" in outcome:
                    outcome["cpu"] = cpu.between(outcome["first"], outcome["first"] + outcome["seconds"])
                runs.setdefault(number, (name, data, []))[2].append(outcome)
    finally:
        cpu.stop()
        if server:
            server.stop()
        if broker:
            broker.stop()

    results, spread = [], {}
    for name, data, outcomes in runs.values():
        finished = sorted((o for o in outcomes if "error" not in o), key=_rate)
        results.append((name, data, finished[(len(finished) - 1) // 2] if finished else outcomes[-1]))
        if len(finished) > 1:
            spread[(name, data)] = f"{_rate(finished[0]):,.0f}–{_rate(finished[-1]):,.0f}"
    worker_rates = {data: _rate(o) for name, data, o in results if name.startswith("project worker") and "error" not in o}
    if args.repeat > 1:
        print(f"\nMedian run of {args.repeat} rounds per row (the slower middle one for an even count); "
              "the last column is the range of the rounds.")
    print(f"\n{'what':<32} {'records':<14} {'events':>9} {'seconds':>8} {'events/s':>10} {'worker ÷':>9} {'CPU µs/event':>13}"
          + (f" {'events/s range':>16}" if spread else ""))
    for name, data, outcome in results:
        if "error" in outcome:
            print(f"{name:<32} {data:<14} failed: {outcome['error']}")
            continue
        rate = _rate(outcome)
        worker = worker_rates.get(data)
        ratio = f"{worker / rate:>9.2f}" if worker and not name.startswith("project worker") else f"{'':>9}"
        used = outcome.get("cpu", {}).get("machine")
        per_event = f"{used / outcome['events'] * 1e6:>13.1f}" if used is not None else f"{'':>13}"
        print(f"{name:<32} {data:<14} {outcome['events']:>9,} {outcome['seconds']:>8.1f} {rate:>10,.0f} {ratio} {per_event}"
              + (f" {spread.get((name, data), ''):>16}" if spread else ""))
    print_round_ratios(runs)
    print_cpu_shares(results)


def _row_numbers(text: str) -> set:
    try:
        return {int(n) for n in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected row numbers separated by commas, got {text!r}") from None


def _rate(outcome) -> float | None:
    return None if "error" in outcome else outcome["events"] / outcome["seconds"]


def print_round_ratios(runs) -> None:
    """The worker ÷ each baseline within each round, where both finished: the figure a target is
    stated in, without pairing one row's fast run with another's slow one."""
    workers = {data: outcomes for name, data, outcomes in runs.values() if name.startswith("project worker")}
    lines = []
    for name, data, outcomes in runs.values():
        if name.startswith("project worker") or data not in workers or len(outcomes) < 2:
            continue
        ratios = [f"{_rate(w) / _rate(o):.2f}" for w, o in zip(workers[data], outcomes) if _rate(w) and _rate(o)]
        if ratios:
            lines.append(f"{'':<4}worker ÷ {name} ({data}), round by round: {', '.join(ratios)}")
    if lines:
        print("\n" + "\n".join(lines))


def print_cpu_shares(results) -> None:
    """Where each row's CPU went: the measured code (and whatever else ran), ClickHouse, the broker.
    The machine has os.cpu_count() cores: at full use it can afford that many CPU-seconds a second,
    which bounds events/s at cores ÷ (CPU µs per event)."""
    cores = os.cpu_count()
    print(f"\nCPU per event, µs (machine: {cores} cores; cores ÷ µs = the rate at which they would be full)")
    print(f"{'what':<32} {'records':<14} {'measured':>9} {'ClickHouse':>11} {'broker':>7} {'machine':>8} {'cores busy':>11} {'full at ev/s':>13}")
    for name, data, outcome in results:
        used = outcome.get("cpu")
        if not used:
            continue
        events, seconds = outcome["events"], outcome["seconds"]
        machine, clickhouse, broker = used["machine"], used.get("clickhouse", 0.0), used.get("broker", 0.0)
        measured = max(0.0, machine - clickhouse - broker)
        print(f"{name:<32} {data:<14} {measured / events * 1e6:>9.1f} {clickhouse / events * 1e6:>11.1f} "
              f"{broker / events * 1e6:>7.1f} {machine / events * 1e6:>8.1f} {machine / seconds:>11.2f} "
              f"{cores * events / machine if machine else 0:>13,.0f}")
        if name.startswith("project worker") and "worker process" in used:
            main, both = used["worker process"], used["worker and writer"]
            print(f"{'':<4}worker process {main / events * 1e6:.1f} µs/event ({main / seconds:.2f} cores), "
                  f"writer process {(both - main) / events * 1e6:.1f} µs/event ({(both - main) / seconds:.2f} cores)")


if __name__ == "__main__":
    main()
