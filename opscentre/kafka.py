"""Topics of the contract, created explicitly, and their identities."""

from __future__ import annotations

import logging
import struct
import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .events import MAX_RECORD_BYTES  # noqa: F401 (batches travel as records of up to 1 MiB, CONTRACT §1)
from .settings import Settings

log = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    """The bootstrap servers could not be reached."""


def admin(bootstrap: str, timeout_s: float = 10.0) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),  # its default, 30 s, is how long a wrong address took to report
            client_id="opscentre-admin",
        )
    except KafkaError as exc:
        raise KafkaUnavailable(f"Kafka at {bootstrap} is not reachable: {exc}") from None


def ensure_topics(settings: Settings, partitions: int | None = None) -> None:
    """Create the contract's topics with an explicit partition count; keep existing ones."""
    bootstrap = settings.require_kafka()
    count = partitions or settings.partitions
    client = admin(bootstrap)
    try:
        existing = set(client.list_topics())
        wanted = [
            NewTopic(name, count, 1, topic_configs={"retention.ms": "-1", "retention.bytes": "-1"})
            for name in (*settings.event_topics, settings.dead_letter_topic, settings.alerts_topic)
            if name not in existing
        ]
        if wanted:
            try:
                client.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", ", ".join(t.name for t in wanted))
    finally:
        client.close()


def topic_ids(bootstrap: str, topics) -> dict[str, str]:
    """Each topic's id: it changes when a topic is recreated, offsets restarting at 0.

    Where a broker does not report topic ids, the cluster id stands in.
    """
    client = admin(bootstrap)
    try:
        described = client.describe_topics(list(topics))
        cluster = client.describe_cluster().get("cluster_id") or "cluster"
    finally:
        client.close()
    ids = {}
    for topic in described:
        topic_id = topic.get("topic_id")
        if not topic_id or set(str(topic_id)) <= {"0", "-"}:
            topic_id = f"{cluster}/{topic['name']}"
        ids[topic["name"]] = str(topic_id)
    return ids


def partition_count(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), client_id="opscentre-meta")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
    finally:
        consumer.close()
    if not partitions:
        raise KafkaUnavailable(f"topic {topic} does not exist on {bootstrap}")
    return len(partitions)


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (murmur2, as Java clients do)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


_WORDS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as kafka-python's but reading
    four bytes at a time: it runs for every event a producer sends."""
    m = 0x5BD1E995
    length = len(data)
    words = length >> 2
    unpack = _WORDS.get(words)
    if unpack is None:
        unpack = _WORDS[words] = struct.Struct(f"<{words}I")
    h = 0x9747B28C ^ length
    for k in unpack.unpack_from(data):
        k = (k * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        rest = words << 2
        if tail == 3:
            h ^= data[rest + 2] << 16
        if tail >= 2:
            h ^= data[rest + 1] << 8
        h = ((h ^ data[rest]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def keys_since(bootstrap: str, topic: str, partition: int, offset: int, quiet_s: float = 1.0) -> dict[str, int]:
    """{record key: offset} of a partition from `offset` to its end.

    The end is where nothing more arrives for `quiet_s`: Tansu under-reports end offsets.
    """
    tp = TopicPartition(topic, partition)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
                             client_id="opscentre-alert-check")
    try:
        consumer.assign([tp])
        consumer.seek(tp, max(0, offset))
        found: dict[str, int] = {}
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_s:
            for message in consumer.poll(timeout_ms=200).get(tp, ()):
                quiet_since = time.monotonic()
                if message.key is not None:
                    found[message.key.decode("utf-8", errors="replace")] = message.offset
        return found
    finally:
        consumer.close()
