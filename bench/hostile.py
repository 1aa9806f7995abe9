"""What a hostile 1 MiB record costs the worker, against a valid 1 MiB batch.

Two measurements:
- processor: the worker's per-record work (validation, counting, dead letters encoded, rejected
  rows prepared) on each kind of record, in this process, median of --repeat runs;
- worker: the real `opscentre worker` on Tansu and ClickHouse 18.16 (started here), fed --records
  copies of one kind at a time; the time from the first record produced to the last one stored
  (valid) or dead-lettered (hostile), which adds sending the dead letters to Kafka.

    python bench/hostile.py [--repeat 5] [--records 10] [--only processor|worker]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import make_events  # noqa: E402
from opscentre.events import MAX_RECORD_BYTES  # noqa: E402
from opscentre.settings import Settings  # noqa: E402
from sinks.clickhouse_sink import PartitionSnapshot  # noqa: E402
from streams.processor import Processor  # noqa: E402

LIMIT = MAX_RECORD_BYTES - 64


def _fill(item: bytes, sep: bytes = b",") -> bytes:
    count = (LIMIT - 2) // (len(item) + len(sep))
    return b"[" + sep.join([item] * count) + b"]"


def _batch(items: list) -> bytes:
    """As many of `items` as fit in LIMIT bytes, as a JSON array."""
    kept, size = [], 2
    for item in items:
        if size + len(item) + 1 > LIMIT:
            break
        kept.append(item)
        size += len(item) + 1
    return b"[" + b",".join(kept) + b"]"


def records() -> dict:
    events = make_events(6000, seed=3)
    valid = [json.dumps(e).encode() for e in events if e["event_type"] != "security.alert"]
    valid_batch = _batch(valid)
    valid = valid[:valid_batch.count(b'"event_id"')]
    bad_due = [e.replace(b'"due_at": "', b'"due_at": "x') if b'"due_at"' in e else e.replace(b'"event_id"', b'"event_idx"')
               for e in valid]
    half = LIMIT // 2
    return {
        f"valid batch ({len(valid):,} events)": valid_batch,
        "every event invalid": _batch(bad_due),
        "deep nesting, balanced": b"[" * half + b"]" * half,
        "deep nesting, never closed": b"[" * LIMIT,
        "deep nesting in one field of each event": _batch([e[:-1] + b', "x": ' + b"[" * 100 + b"]" * 100 + b"}"
                                                           for e in valid]),
        "huge numbers (1e400)": _fill(b"1e400"),
        "a 10^4000 number in each event": _batch([
            e.replace(b'"occurred_at": "', b'"occurred_at": 1' + b"0" * 4000 + b', "o": "') for e in valid]),
        "a million tiny items": _fill(b"1"),
        "10,000 tiny objects (at the item limit)": b"[" + b",".join([b"{}"] * 10_000) + b"]",
        "10,000 events missing a field": b"[" + b",".join(
            [b'{"event_type": "document.exchanged", "event_id": "x", "province": "01"}'] * 10_000) + b"]",
        "one 1 MiB string": b'{"event_id": "' + b"x" * (LIMIT - 20) + b'"}',
        "not UTF-8": b"\xff" * LIMIT,
        "not JSON": b"CCCD 001204012345 " * (LIMIT // 18),
        "lone surrogates": _fill(b'"\\ud800"'),
        "over the size limit": b" " * (MAX_RECORD_BYTES + 1),
    }


class NoStore:
    """The processor reads stored state only on a take-over: nothing is stored here."""

    def load_partition(self, *args):
        return PartitionSnapshot({}, -1, [])

    def recompute_partition_rollups(self, *args):
        pass

    def recompute_partition_lifecycle(self, *args):
        return []

    def load_open_state(self, *args):
        return [], []

    def resolved_since(self, *args):
        return []

    def load_alert_state(self, *args):
        return [], [], [], -1

    def load_open_items(self, *args):
        return []

    def fetch_rows(self, *args):
        return {}

    def write(self, batch):
        return 0


def bench_processor(repeat: int) -> list:
    settings = Settings(topic_prefix="b")
    rows = []
    now_s = time.time()
    for label, value in records().items():
        times, letters = [], 0
        for run in range(repeat):
            processor = Processor(settings, {settings.service_topic: "t"}, NoStore(), b"k",
                                  ["%02d" % i for i in range(100)], clock=lambda: now_s)
            processor.process(settings.service_topic, 0, 0, int(now_s * 1000), b"[]")  # take-over outside the timing
            started = time.perf_counter()
            letters = len(processor.process(settings.service_topic, 0, 1, int(now_s * 1000), value))
            processor.prepare()  # the rows a snapshot carries to the writer
            times.append(time.perf_counter() - started)
        rows.append((label, len(value), statistics.median(times), letters))
    return rows


def _metrics(port: int) -> dict:
    from opscentre.local import scrape

    return scrape(port)



def _rows_written(port: int, table: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "opscentre_sink_rows_written_total" and sample.labels.get("table") == table)


def bench_worker(count: int) -> list:
    """Each kind through a real worker: seconds from its first record consumed to the last one's rows
    stored (raw events, or rejections: stored after the record's dead letters are on Kafka)."""
    import tempfile
    from pathlib import Path

    from kafka import KafkaProducer

    from opscentre.embedded import EmbeddedBroker
    from opscentre.kafka import ensure_topics
    from tests.harness import ClickHouseServer, Pipeline

    results = []
    broker, server = EmbeddedBroker().start(), ClickHouseServer().start()
    try:
        for n, (label, value) in enumerate(records().items()):
            pipeline = Pipeline(broker.bootstrap, server.url(f"hostile{n}"), Path(tempfile.mkdtemp()))
            settings = pipeline.settings
            ensure_topics(settings)
            valid = label.startswith("valid")
            producer = KafkaProducer(bootstrap_servers=settings.kafka.split(","), acks="all", max_request_size=4 << 20)
            for copy in range(count):  # valid copies get new event ids (same length), else all but one are duplicates
                body = value.replace(b'"event_id": "ev-', f'"event_id": "e{copy:x}-'.encode()) if valid else value
                producer.send(settings.service_topic, value=body, partition=copy % settings.partitions)
            producer.close()
            if valid:
                table, expected = "service_events", count * value.count(b'"event_id"')
            else:
                decoded = Processor(settings, {settings.service_topic: "t"}, NoStore(), b"k",
                                    ["%02d" % i for i in range(100)]).validator.decode(value, int(time.time() * 1000))
                table, expected = "rejected_events", count * len(decoded.rejections)
            worker = pipeline.start_worker()
            first = None
            try:
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    if first is None and _metrics(worker.metrics_port).get("opscentre_stream_records_total", 0) > 0:
                        first = time.monotonic()
                    if first is not None and _rows_written(worker.metrics_port, table) >= expected:
                        break
                    if not worker.running():
                        raise RuntimeError(worker.log())
                    time.sleep(0.05)
                else:
                    raise RuntimeError(f"{label}: not done in 900 s")
                results.append((label, time.monotonic() - first))
            finally:
                worker.stop()
    finally:
        server.stop()
        broker.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--only", choices=("processor", "worker"))
    args = parser.parse_args()
    if not 1 <= args.records <= 16:
        parser.error("--records: 1 to 16")
    if args.only != "worker":
        rows = bench_processor(args.repeat)
        valid_s = rows[0][2]
        print(f"processor, median of {args.repeat} runs, one record")
        print("| record | bytes | ms | × valid | dead letters |\n|---|---|---|---|---|")
        for label, size, seconds, letters in rows:
            print(f"| {label} | {size:,} | {seconds * 1000:.1f} | {seconds / valid_s:.2f} | {letters:,} |")
    if args.only != "processor":
        rows = bench_worker(args.records)
        valid_s = rows[0][1]
        print(f"\nworker, {args.records} records of each kind, produce → stored or dead-lettered")
        print("| record | s | × valid |\n|---|---|---|")
        for label, seconds in rows:
            print(f"| {label} | {seconds:.2f} | {seconds / valid_s:.2f} |")


if __name__ == "__main__":
    main()
