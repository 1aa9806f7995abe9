"""Shared set-up for benchmarks: servers, pre-produced data, waiting for results."""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from opscentre.events import routing_key  # noqa: E402
from opscentre.kafka import ensure_topics, partition_for  # noqa: E402
from producers.simulator import Simulator  # noqa: E402

encode = msgspec.json.Encoder().encode


def make_events(count: int, seed: int = 1, start_ms: int | None = None) -> list[dict]:
    start_ms = start_ms or (int(time.time()) - 6 * 3600) * 1000
    simulator = Simulator(seed, rate=200.0, start_ms=start_ms, steady=True)
    return [simulator.next_event() for _ in range(count)]


def produce(settings, events, per_record: int) -> int:
    """Pre-produce events: JSON-array batches of `per_record` per partition, or single events (1)."""
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.split(","), acks=1, linger_ms=20,
                             batch_size=1 << 20, max_request_size=2 << 20)
    topics = {"service": settings.service_topic, "security": settings.security_topic}
    buffers: dict = {}
    records = 0
    for event in events:
        kind = "security" if event["event_type"] == "security.alert" else "service"
        key = routing_key(event)
        partition = partition_for(key, settings.partitions)
        if per_record == 1:
            producer.send(topics[kind], key=key.encode(), value=encode(event), partition=partition)
            records += 1
            continue
        buffer = buffers.setdefault((kind, partition), [])
        buffer.append(encode(event))
        if len(buffer) >= per_record:
            producer.send(topics[kind], value=b"[" + b",".join(buffer) + b"]", partition=partition)
            buffers[(kind, partition)] = []
            records += 1
    for (kind, partition), buffer in buffers.items():
        if buffer:
            producer.send(topics[kind], value=b"[" + b",".join(buffer) + b"]", partition=partition)
            records += 1
    producer.flush()
    producer.close()
    return records


def produce_librdkafka(settings, events) -> int:
    """Single-event records as a third-party system sends them: librdkafka (confluent-kafka), its
    default partitioner (consistent_random: CRC32 of the key), keyed by item."""
    from confluent_kafka import Producer

    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 20, "acks": "1"})
    topics = {"service": settings.service_topic, "security": settings.security_topic}
    for n, event in enumerate(events):
        kind = "security" if event["event_type"] == "security.alert" else "service"
        while True:
            try:
                producer.produce(topics[kind], key=routing_key(event).encode(), value=encode(event))
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
        if n % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)
    return len(events)


def paced_single_events(settings, rate: float, duration_s: float, seed: int) -> int:
    """The simulator's steady traffic at `rate` events/s for `duration_s`, sent live as single-event
    records by librdkafka (as produce_librdkafka): a third party's load. Run it in a process of its
    own, so that its work does not delay the caller's timings."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 5, "acks": "1"})
    topics = {"service": settings.service_topic, "security": settings.security_topic}
    started = time.monotonic()
    simulator = Simulator(seed, rate=rate, start_ms=int(time.time() * 1000), steady=True)
    sent = 0
    while (elapsed := time.monotonic() - started) < duration_s:
        for _ in range(int(elapsed * rate) - sent):  # catch up to the rate, then wait a tick
            event = simulator.next_event()
            kind = "security" if event["event_type"] == "security.alert" else "service"
            while True:
                try:
                    producer.produce(topics[kind], key=routing_key(event).encode(), value=encode(event))
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(60)
    return sent


class CpuUse:
    """CPU time spent on the machine, sampled in the background, to say what an event costs.

    Every `interval_s` it reads the machine's busy time (/proc/stat) and the CPU time of named
    processes with their descendants (/proc/PID/stat). `between(t0, t1)` gives the seconds of CPU
    each used between two `time.monotonic()` instants (the nearest samples), "machine" included.
    """

    def __init__(self, pids: dict, interval_s: float = 0.1):
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.own = {}  # name -> pid counted without its descendants
        self.interval_s = interval_s
        self.samples: list = []
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-use", daemon=True)
        self._thread.start()

    def _machine(self) -> float:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
        return (sum(fields[:8]) - fields[3] - fields[4]) / self._tick

    def track(self, name: str, pid: int, descendants: bool = True) -> None:
        """Also sample this process from now on (with or without its descendants)."""
        (self.pids if descendants else self.own)[name] = pid

    def _tree(self, pid: int, descendants: bool = True) -> float:
        total = 0.0
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total = (int(fields[11]) + int(fields[12])) / self._tick
            if not descendants:
                return total
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    total += sum(self._tree(int(child)) for child in children.read().split())
        except (OSError, ValueError, IndexError):
            pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            used = {"machine": self._machine()}
            used.update((name, self._tree(pid)) for name, pid in list(self.pids.items()))
            used.update((name, self._tree(pid, descendants=False)) for name, pid in list(self.own.items()))
            self.samples.append((time.monotonic(), used))
            self._stop.wait(self.interval_s)

    def _at(self, instant: float) -> dict:
        return min(self.samples, key=lambda sample: abs(sample[0] - instant))[1]

    def between(self, t0: float, t1: float) -> dict:
        before, after = self._at(t0), self._at(t1)
        return {name: max(0.0, after.get(name, 0.0) - before.get(name, 0.0)) for name in after}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
