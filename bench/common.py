"""Shared set-up for benchmarks: servers, pre-produced data, waiting for results."""

from __future__ import annotations

import os
import sys
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
