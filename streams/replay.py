"""`opscentre replay`: reprocess a range of the event topics into ClickHouse.

The same Processor as the worker, driven by a plain kafka-python consumer with
assigned partitions (no consumer group, no committed offsets). Because rows
carry source-offset versions, replaying offsets already stored in the target
database changes nothing; `--into` another database gives a what-if copy.
Replays never publish to the dead-letter topic (rejections still land in the
target's `rejected_events`). Overdue alerts a replay raises are stored and put
on the alerts topic marked `"replayed": true`, so nobody is paged twice.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from opscentre.catalogue import load_catalogue
from opscentre.clickhouse import Store
from opscentre.kafka import keys_since, partition_count, topic_ids
from opscentre.provinces import load_provinces
from opscentre.settings import Settings
from sinks.clickhouse_sink import ClickHouseSink
from sinks.schema import migrate

from .lifecycle import fill as fill_lifecycle
from .processor import Processor, ProcessorFailure, alert_messages


class ReplayError(ValueError):
    """A replay range that cannot be resolved."""


def parse_offsets(text: str, topics) -> dict | str:
    """'earliest' or 'TOPIC:PARTITION:OFFSET,...' → 'earliest' or {TopicPartition: offset}."""
    if text.strip() == "earliest":
        return "earliest"
    positions = {}
    for part in text.split(","):
        try:
            topic, partition, offset = part.strip().rsplit(":", 2)
            tp = TopicPartition(topic, int(partition))
            positions[tp] = int(offset)
        except ValueError:
            raise ReplayError(f"expected 'earliest' or TOPIC:PARTITION:OFFSET[,...], got {part.strip()!r}") from None
        if topic not in topics:
            raise ReplayError(f"topic {topic!r} is not an event topic ({', '.join(topics)})")
        if positions[tp] < 0:
            raise ReplayError(f"offset must be >= 0 in {part.strip()!r}")
    return positions


@dataclass
class ReplayReport:
    records: int = 0
    seconds: float = 0.0


def replay(settings: Settings, store: Store, start=None, end=None, start_ms: int | None = None,
           end_ms: int | None = None, idle_s: float = 2.0, out=sys.stderr, flush_every_s: float = 1.0) -> ReplayReport:
    """Reprocess [start, end) offsets (or [start_ms, end_ms) by broker time) into `store`."""
    bootstrap = settings.require_kafka()
    migrate(store)
    fill_lifecycle(store)
    ids = topic_ids(bootstrap, settings.event_topics)
    producer = None
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, group_id=None,
        max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20, client_id="opscentre-replay",
    )
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in settings.event_topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            raise ReplayError("the event topics do not exist on this broker")
        consumer.assign(partitions)
        beginning = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        first = dict(beginning)
        stop: dict = {}
        if isinstance(start, dict):
            first = {tp: start.get(tp, ends[tp]) for tp in partitions}  # unnamed partitions: nothing
        if start_ms is not None:
            found = consumer.offsets_for_times({tp: start_ms for tp in partitions})
            first = {tp: (found[tp].offset if found.get(tp) and found[tp].timestamp >= 0 else ends[tp]) for tp in partitions}
        if isinstance(end, dict):
            stop = {tp: end.get(tp) for tp in partitions if tp in end}
        if end_ms is not None:
            found = consumer.offsets_for_times({tp: end_ms for tp in partitions})
            stop = {tp: found[tp].offset for tp in partitions if found.get(tp) and found[tp].timestamp >= 0}
        for tp in partitions:
            consumer.seek(tp, first[tp])
        processor = Processor(
            settings, ids, ClickHouseSink(store), settings.require_pseudonym_key(),
            load_provinces(settings.provinces_file), replaying=True,
            catalogue=load_catalogue(settings.catalogue_file),
        )
        producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", client_id="opscentre-replay")

        alert_partitions = partition_count(bootstrap, settings.alerts_topic)
        processor.published_since = lambda partition, offset: keys_since(
            bootstrap, settings.alerts_topic, partition % alert_partitions, offset)

        def flush() -> None:
            processor.flush()
            rows = processor.take_unpublished()
            sent = [producer.send(settings.alerts_topic, key=key, value=value, partition=partition % alert_partitions)
                    for partition, key, value in alert_messages(rows)]
            producer.flush()
            processor.mark_published(rows, [future.get().offset for future in sent])

        report = ReplayReport()
        started = last_flush = last_progress = time.monotonic()
        quiet_since = None
        done: set = set()
        while len(done) < len(partitions):
            batches = consumer.poll(timeout_ms=200, max_records=5000)
            if not batches:
                quiet_since = quiet_since or time.monotonic()
                # Tansu under-reports end offsets: "caught up" means nothing arrives for a while.
                if time.monotonic() - quiet_since >= idle_s:
                    break
            else:
                quiet_since = None
            for tp, messages in batches.items():
                limit = stop.get(tp)
                if limit is not None and messages[-1].offset >= limit:
                    messages = [message for message in messages if message.offset < limit]
                    done.add(tp)
                    consumer.pause(tp)
                try:
                    processor.process_records(tp.topic, tp.partition, messages)  # runs, as the worker applies them
                except ProcessorFailure as failure:
                    raise ReplayError(f"{failure}; what was stored before it is exact, run the replay again") from None
                report.records += len(messages)
            now = time.monotonic()
            if now - last_flush >= flush_every_s:
                flush()
                last_flush = now
            if out is not None and now - last_progress >= 2.0:
                last_progress = now
                print(f"replay: {report.records:,} records, {report.records / (now - started):,.0f}/s", file=out)
        flush()
        if processor.has_pending():
            processor.flush()  # records that the last alerts went out
        report.seconds = time.monotonic() - started
        return report
    finally:
        consumer.close()
        if producer is not None:
            producer.close()
