"""`opscentre worker`: the Faust app around the processor.

One agent reads both event topics. It takes records in batches without
acknowledging them, applies them, publishes rejections, writes everything to
ClickHouse, and only then acknowledges: Faust commits an offset once its rows
are stored. Whatever is redelivered past the committed offset is recognised
by the row versions (see streams.processor) and does not count twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from prometheus_client import Gauge

from opscentre.clickhouse import StoreError, connect
from opscentre.kafka import MAX_RECORD_BYTES, ensure_topics, topic_ids
from opscentre.provinces import load_provinces
from opscentre.settings import Settings
from opscentre.telemetry import serve_metrics
from sinks.clickhouse_sink import FLUSH_FAILURES, ClickHouseSink
from sinks.schema import migrate

from .processor import Processor

log = logging.getLogger("opscentre.worker")

LAG = Gauge("opscentre_stream_consumer_lag", "Records behind the partition's end offset", ["topic", "partition"])
STORE_UP = Gauge("opscentre_stream_clickhouse_up", "1 while the last ClickHouse write succeeded")


def build_app(settings: Settings, processor: Processor) -> faust.App:
    bootstrap = settings.require_kafka()
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{host}" for host in bootstrap.split(",")],
        autodiscover=False,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.group_session_timeout_s,
        broker_rebalance_timeout=settings.group_rebalance_timeout_s,
        broker_heartbeat_interval=settings.group_heartbeat_s,
        consumer_max_fetch_size=4 * MAX_RECORD_BYTES,
        producer_max_request_size=2 * MAX_RECORD_BYTES,
        stream_buffer_maxsize=max(4096, settings.flush_max_records * 2),
    )
    source = app.topic(*settings.event_topics, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.dead_letter_topic, key_serializer="raw", value_serializer="raw")
    lock = asyncio.Lock()
    loop_executor = None

    async def store_everything() -> None:
        """Flush until ClickHouse takes it; consumption pauses meanwhile (nothing is dropped)."""
        delay = 0.5
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(loop_executor, processor.flush)
                STORE_UP.set(1)
                return
            except StoreError as exc:
                STORE_UP.set(0)
                FLUSH_FAILURES.inc()
                log.warning("ClickHouse write failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def apply_with_retry(message) -> list:
        delay = 0.5
        while True:
            try:
                return processor.process(
                    message.topic, message.partition, message.offset,
                    int(message.timestamp * 1000), message.value,
                )
            except StoreError as exc:  # taking a partition over reads ClickHouse
                STORE_UP.set(0)
                log.warning("ClickHouse read failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    @app.agent(source)
    async def process(stream):
        async for batch in stream.noack_take(settings.flush_max_records, within=settings.flush_interval_s):
            async with lock:
                highest = {}
                for event in batch:
                    message = event.message
                    for key, value in await apply_with_retry(message):
                        await dead_letters.send(key=key, value=value)
                    highest[message.tp] = message.offset
                await app.producer.flush()
                await store_everything()
            for event in batch:
                await stream.ack(event)
            for tp, offset in highest.items():
                end = app.consumer.highwater(tp)
                if end is not None:
                    LAG.labels(tp.topic, str(tp.partition)).set(max(0, end - offset - 1))

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs) -> None:
        async with lock:
            if processor.has_pending():
                await store_everything()
            processor.release({(tp.topic, tp.partition) for tp in revoked})

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Start the worker; returns when it is stopped (SIGINT/SIGTERM)."""
    from faust.worker import Worker

    bootstrap = settings.require_kafka()
    store = connect(settings.require_clickhouse(), settings.clickhouse_timeout_s)
    migrate(store)
    ensure_topics(settings)
    ids = topic_ids(bootstrap, settings.event_topics)
    serve_metrics(settings)
    processor = Processor(
        settings, ids, ClickHouseSink(store), settings.require_pseudonym_key(),
        load_provinces(settings.provinces_file), clock=time.time,
    )
    app = build_app(settings, processor)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
