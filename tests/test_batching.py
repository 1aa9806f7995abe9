"""The batching producer never loses events silently: what Kafka does not take is reported."""

from __future__ import annotations

import dataclasses
import random

import pytest

from opscentre.embedded import EmbeddedBroker
from kafka.partitioner.default import murmur2 as kafka_python_murmur2
from opscentre.kafka import MAX_RECORD_BYTES, KafkaUnavailable, ensure_topics, murmur2
from producers.batching import EVENTS_FAILED, BatchingProducer
from tests.workload import Workload

pytestmark = pytest.mark.integration


def failed_events(settings) -> float:
    return EVENTS_FAILED.labels(settings.service_topic)._value.get()


def test_keys_hash_as_kafka_hashes_them():
    for key, java in ((b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-longer-string", -1486304829)):
        assert murmur2(key) == java & 0xFFFFFFFF  # Kafka's own UtilsTest.testMurmur2
    rng = random.Random(4)
    keys = [rng.randbytes(rng.randrange(0, 40)) for _ in range(5000)] + [f"HS-100-{n:x}".encode() for n in range(5000)]
    assert [murmur2(key) for key in keys] == [kafka_python_murmur2(key) for key in keys]


def test_a_record_kafka_refuses_is_reported_by_flush(pipeline):
    ensure_topics(pipeline.settings)
    producer = BatchingProducer(pipeline.settings)
    before = failed_events(pipeline.settings)
    producer.send(Workload(seed=5, start_ms=1_700_000_000_000, events=3).valid[0])
    producer.send_record("service", b"x" * (3 * MAX_RECORD_BYTES))  # over the producer's request size
    with pytest.raises(KafkaUnavailable, match="1 events were not delivered to Kafka"):
        producer.flush()
    assert failed_events(pipeline.settings) == before + 1
    producer.flush()  # reported once; the events Kafka took stay taken
    producer.close()


def test_a_broker_gone_is_reported_by_flush(pipeline):
    broker = EmbeddedBroker().start()
    settings = dataclasses.replace(pipeline.settings, kafka=broker.bootstrap)
    try:
        ensure_topics(settings)
        producer = BatchingProducer(settings)
    finally:
        broker.stop()
    producer.send(Workload(seed=6, start_ms=1_700_000_000_000, events=3).valid[0])
    with pytest.raises(KafkaUnavailable, match="Kafka did not take the events sent within 2 s"):
        producer.close(timeout_s=2)
    producer._producer.close(timeout=1)  # as kafka-python does when the client is collected: must not raise
