"""How the test broker's produce and fetch rates change with what it holds.

    .venv/bin/python bench/broker_scale.py [--step 1000000] [--steps 4] [--rate 5000] [--paced-s 20]

Tansu (the embedded broker) keeps every record in memory. This fills one 4-partition topic with
single-event records of the simulator's service traffic (~400 bytes each), `--step` records at a
time through librdkafka at full speed, and after each step times a plain librdkafka consumer
reading the last `--sample` records; then it sends `--rate` records a second for `--paced-s`
seconds as a live source does, with a consumer tailing them, and measures the broker's CPU.
Nothing of the project's worker runs: the numbers are the broker's alone, to read beside
bench/latency_memory.py's long runs (needs the bench extra).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import CpuUse  # noqa: E402
from opscentre.embedded import EmbeddedBroker  # noqa: E402
from producers.simulator import Simulator  # noqa: E402

PARTITIONS = 4


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def produce(bootstrap: str, topic: str, values: list) -> float:
    """Seconds to send `values` (acks=1, librdkafka's defaults otherwise) and have them acknowledged."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "1"})
    started = time.perf_counter()
    for n, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, key=str(n).encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(600)
    return time.perf_counter() - started


def fetch_last(bootstrap: str, topic: str, count: int) -> float:
    """Seconds for one consumer to read the last `count` records of the topic."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scale-{time.time_ns()}",
                         "enable.auto.commit": False})
    ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(PARTITIONS)]
    share = count // PARTITIONS
    consumer.assign([TopicPartition(topic, p, max(0, end - share)) for p, end in enumerate(ends)])
    wanted = sum(min(share, end) for end in ends)
    started = time.perf_counter()
    seen = 0
    while seen < wanted and time.perf_counter() - started < 600:
        for message in consumer.consume(10_000, timeout=1.0):
            if not message.error():
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def paced(bootstrap: str, topic: str, values: list, rate: float) -> float:
    """Send `values` at `rate` records/s as a live source does (librdkafka, linger 5 ms) while one
    consumer tails the topic; returns the seconds the consumer took to see them all."""
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tail-{time.time_ns()}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(PARTITIONS)]
    consumer.assign([TopicPartition(topic, p, end) for p, end in enumerate(ends)])
    seen = [0]

    def tail():
        deadline = time.monotonic() + len(values) / rate + 300
        while seen[0] < len(values) and time.monotonic() < deadline:
            seen[0] += sum(1 for m in consumer.consume(10_000, timeout=0.2) if not m.error())

    reader = threading.Thread(target=tail)
    reader.start()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "1"})
    started = time.monotonic()
    sent = 0
    while sent < len(values):
        for value in values[sent:min(len(values), int((time.monotonic() - started) * rate))]:
            producer.produce(topic, key=str(sent).encode(), value=value)
            sent += 1
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(600)
    reader.join()
    consumer.close()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=5000, help="records/s of the paced phase after each step")
    parser.add_argument("--paced-s", type=float, default=20, help="seconds of the paced phase")
    args = parser.parse_args()
    from confluent_kafka.admin import AdminClient, NewTopic

    simulator = Simulator(5, rate=5000, start_ms=int(time.time() * 1000), steady=True)
    import msgspec

    encode = msgspec.json.Encoder().encode
    broker = EmbeddedBroker().start()
    cpu = CpuUse({"broker": broker.process.pid}, interval_s=0.5)
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        topic = "scale"
        admin.create_topics([NewTopic(topic, PARTITIONS, 1, config={"retention.ms": "-1", "retention.bytes": "-1"})])[
            topic].result(30)
        print("| records held | broker RSS, MiB | produce, records/s | broker CPU s per 100k produced "
              f"| fetch of the last {args.sample:,}, records/s | broker CPU s per 100k fetched "
              f"| {args.rate:,.0f} records/s sent live and tailed: broker CPU, cores | seen after, s |")
        print("|---|---|---|---|---|---|---|---|")
        held = 0
        for _ in range(args.steps):
            values = [encode(simulator.next_event()) for _ in range(args.step)]
            t0 = time.monotonic()
            produce_s = produce(broker.bootstrap, topic, values)
            t1 = time.monotonic()
            held += len(values)
            fetch_s = fetch_last(broker.bootstrap, topic, args.sample)
            t2 = time.monotonic()
            live = [encode(simulator.next_event()) for _ in range(int(args.rate * args.paced_s))]
            t3 = time.monotonic()
            tailed_s = paced(broker.bootstrap, topic, live, args.rate)
            t4 = time.monotonic()
            held += len(live)
            time.sleep(1)  # a last sample
            produced_cpu = cpu.between(t0, t1).get("broker", 0.0)
            fetched_cpu = cpu.between(t1, t2).get("broker", 0.0)
            live_cores = cpu.between(t3, t4).get("broker", 0.0) / (t4 - t3)
            print(f"| {held:,} | {rss_mb(broker.process.pid):,.0f} | {len(values) / produce_s:,.0f} | "
                  f"{produced_cpu * 100_000 / len(values):.2f} | {args.sample / fetch_s:,.0f} | "
                  f"{fetched_cpu * 100_000 / args.sample:.2f} | {live_cores:.2f} | {tailed_s:.1f} |", flush=True)
    finally:
        cpu.stop()
        broker.stop()


if __name__ == "__main__":
    main()
