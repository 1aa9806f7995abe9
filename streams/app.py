"""`opscentre worker`: the Faust app around the processor.

One agent reads both event topics and applies each record without
acknowledging it, publishing its rejections. About once a second (or after
enough records) it freezes what it has into a snapshot; a writer process
stores the snapshot while the agent goes on. Its rows are then readable; their
hour, day and month rows are written from a thread of their own, in one pass
over every snapshot stored since the last, and only then are the snapshots'
records acknowledged: Faust commits an offset once everything it leads to is
stored. Whatever is redelivered past the committed offset is recognised by the
row versions (see streams.processor) and does not count twice; a partition's
next owner recomputes what derives from rows stored past it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import faust
from faust.transport.consumer import Consumer
from prometheus_client import Gauge

from opscentre.catalogue import load_catalogue
from opscentre.clickhouse import ChdbQueryServer, ChdbStore, StoreError, connect
from opscentre.kafka import (
    MAX_RECORD_BYTES,
    ensure_topics,
    keys_since,
    partition_count,
    topic_ids,
)
from opscentre.memory import return_freed_memory
from opscentre.provinces import load_provinces
from opscentre.settings import Settings
from opscentre.telemetry import serve_metrics
from sinks.clickhouse_sink import FLUSH_FAILURES, ClickHouseSink, Derived
from sinks.retention import apply_retention
from sinks.schema import migrate
from sinks.writer_process import WriterProcess

from .lifecycle import fill as fill_lifecycle
from .processor import Interrupted, Processor, ProcessorFailure, alert_messages

log = logging.getLogger("opscentre.worker")

LAG = Gauge("opscentre_stream_consumer_lag", "Records behind the partition's end offset", ["topic", "partition"])
LAG_SECONDS = Gauge("opscentre_stream_consumer_lag_seconds",
                    "Age of the partition's last record consumed while records remain behind it (0 when caught up)",
                    ["topic", "partition"])
# A snapshot is also taken after this many events, whatever the time (bounds memory and write size).
FLUSH_MAX_EVENTS = 200_000
STORE_UP = Gauge("opscentre_stream_clickhouse_up", "1 while the last ClickHouse write succeeded")
RETENTION_EVERY_S = 3600.0


def kafka_transport(fetch_max_wait_ms: int) -> type:
    """Faust's aiokafka transport, with two changes.

    The broker's fetch wait is set (Faust fixes it at 1.5 s). aiokafka keeps one fetch in flight
    per broker and leaves partitions that still hold fetched records out of it. Once one partition
    has been read to its end, its fetch waits at the broker for new data while the others' records
    run out: with 1.5 s the agent sat 0.9-1.3 s without a record, twice in a 6 s run. A short wait
    costs an idle worker a few small fetches a second.

    Acknowledgements are committed before a revocation starts. Faust's consumer forgets the
    revoked partitions' acknowledgements not yet committed as it starts, and commits only those
    made during the wait that follows: records stored and acknowledged since the last interval
    commit were left uncommitted, and the partition's next owner redid them."""
    from faust.transport.drivers import aiokafka as driver

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            if not hasattr(consumer, "_fetch_max_wait_ms"):
                raise RuntimeError("this aiokafka release names its fetch wait differently; see streams.app")
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts
            return consumer

    class WorkerConsumer(driver.Consumer):
        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def on_partitions_revoked(self, revoked) -> None:
            await commit_acknowledged(self)
            await super().on_partitions_revoked(revoked)

        async def _drain_messages(self, fetcher) -> None:
            """Each fetched batch, whole, to the app's `handle_records` instead of one message at a
            time through Faust's streams (~200 µs of asyncio work a message: the cost of a
            single-event record). Faust keeps the group, the rebalances, the commits (the app
            acknowledges into its consumer's books, `acknowledge`) and the app's lifecycle."""
            handle = self.app.handle_records
            consumer_should_stop = self._stopped.is_set
            fetcher_should_stop = fetcher._stopped.is_set
            read_offset = self._read_offset
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    records, active = await self._wait_next_records(1.0)
                    await self.sleep(0)
                    if not records or self.should_stop:
                        continue
                    if not self.flow_active:
                        await self.perform_seek()
                        continue
                    batch = {}
                    for tp, fetched in records.items():
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue
                        last = read_offset[tp]
                        fetched = [record for record in fetched if last is None or record.offset >= last]
                        if not fetched:
                            continue
                        if last is not None and fetched[0].offset - last > 1:
                            await self._add_gap(tp, last + 1, fetched[0].offset)  # offsets that hold no record
                        batch[tp] = fetched
                    if batch:
                        done = await handle(batch, self.app.consumer_generation_id)
                        for tp, offset in done.items():
                            read_offset[tp] = offset
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    return
                raise

    class Transport(driver.Transport):
        Consumer = WorkerConsumer

    return Transport


def acknowledge(consumer, tp, offsets) -> None:
    """Faust's `Consumer.ack` for many offsets of one partition at once, into the same books: its
    commit timer commits up to the first gap."""
    committed = consumer._committed_offset[tp]
    acked_index = consumer._acked_index[tp]
    new = [offset for offset in offsets if (committed is None or offset >= committed) and offset not in acked_index]
    acked_index.update(new)
    consumer._acked[tp].extend(new)
    consumer._n_acked += len(new)


async def commit_acknowledged(consumer) -> None:
    """Commit every acknowledged offset. Faust's own commit returns at once, committing nothing,
    while another is in flight (its interval timer's, which took its offsets earlier)."""
    await consumer.maybe_wait_for_commit_to_finish()
    await consumer.commit()


class StallWatch:
    """Says where a stuck worker is. The worker holds processed records until they are stored; once it
    has held some and stored none for `after_s`, a thread of its own logs the stage the agent last
    reported and the stack of the event loop's thread (a call blocking the loop shows there), once
    per stall."""

    def __init__(self, after_s: float, holding):
        self.after_s = after_s
        self.holding = holding  # () -> bool: records processed and not yet stored
        self.stage = "starting"
        self.stored_at = time.monotonic()
        self.loop_thread: int | None = None
        self.writing_since: float | None = None
        self._warned = False

    def writing(self) -> None:
        self.writing_since = time.monotonic()

    def stored(self) -> None:
        self.stored_at = time.monotonic()
        self.writing_since = None
        self._warned = False

    def check(self, now: float) -> str | None:
        if not self.holding():
            self.stored_at = now
            self._warned = False
            return None
        waited = now - self.stored_at
        if waited < self.after_s or self._warned:
            return None
        self._warned = True
        frame = sys._current_frames().get(self.loop_thread) if self.loop_thread is not None else None
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(unknown)\n"
        writing = self.writing_since
        write = f"a ClickHouse write in flight for {now - writing:.0f} s" if writing is not None else "no write in flight"
        return (f"stored nothing for {waited:.0f} s while holding processed records; {write}; "
                f"agent's last stage: {self.stage}; event loop at:\n{stack}")

    def start(self) -> None:
        """Call from the event loop's thread."""
        self.loop_thread = threading.get_ident()
        threading.Thread(target=self._watch, name="stall-watch", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, self.after_s / 4))
            message = self.check(time.monotonic())
            if message:
                log.warning("%s", message)


class WorkerApp(faust.App):
    """Before a rebalance or a stop, Faust waits until every record it handed out is acknowledged.
    The worker acknowledges a record only once it is stored, and on a stop the timer that stores
    held records no longer runs: the wait never ended and the worker sat until killed. It stores
    what it holds first (`store_held_records`, set by build_app), and commits once the wait is over:
    the wait's own last commit is skipped while the interval timer's is in flight."""

    store_held_records = None
    handle_records = None  # set by build_app: the consumer hands it each fetched batch

    async def _consumer_wait_empty(self, consumer, logger) -> None:
        await self.store_held_records()
        await super()._consumer_wait_empty(consumer, logger)
        await commit_acknowledged(consumer)


if not hasattr(faust.App, "_consumer_wait_empty") or not hasattr(Consumer, "maybe_wait_for_commit_to_finish"):
    raise RuntimeError("this Faust release waits for acknowledgements differently; see streams.app.WorkerApp")
if not all(hasattr(Consumer, name) for name in ("_wait_next_records", "_add_gap", "perform_seek", "_new_offset")):
    raise RuntimeError("this Faust release drains its consumer differently; see streams.app.kafka_transport")


def build_app(settings: Settings, processor: Processor, writer=None, deriver=None) -> faust.App:
    """The worker's Faust app. `writer.insert(batch)` stores snapshots and `deriver.derive(derived)`
    adds what derives from them (both default to the processor's sink, one after the other:
    a chDB path serves one caller at a time)."""
    writer = writer or processor.sink
    deriver = deriver or processor.sink
    bootstrap = settings.require_kafka()
    app = WorkerApp(
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
        consumer_max_fetch_size=16 * MAX_RECORD_BYTES,
        producer_max_request_size=2 * MAX_RECORD_BYTES,
        stream_buffer_maxsize=max(4096, settings.flush_max_records * 2),
        # Faust's default checks each fetched batch's CRC on the consumer thread, whose time the agent
        # then waits for (the GIL): ~0.25 s per 1.2 M events here. TCP checksums the transfer and the
        # broker checked the CRC when it took the batch; librdkafka does not check by default either.
        broker_check_crcs=False,
    )
    app.transport = kafka_transport(int(settings.fetch_max_wait_s * 1000))(app.conf.broker_consumer, app)
    source = app.topic(*settings.event_topics, key_serializer="raw", value_serializer="raw")
    alert_partitions = partition_count(bootstrap, settings.alerts_topic)
    processor.published_since = lambda partition, offset: keys_since(
        bootstrap, settings.alerts_topic, partition % alert_partitions, offset)
    lock = asyncio.Lock()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-writer")
    derive_executor = executor if deriver is writer else ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="clickhouse-deriver")
    # The snapshot being written while the next records are processed, and the offsets it stores.
    in_flight: list = []  # [(future, snapshot, {tp: [offsets]})] — at most one
    # Snapshots stored whose derived rows are not: ({tp: [offsets]}, Derived, when stored), oldest
    # first; and the pass in flight over some of them: [future, [{tp: [offsets]}, ...]] or empty.
    # A pass writes the newest row of each bucket the snapshots touched, the same hour rows
    # again and again under steady input: one runs every `derive_interval_s`, at once when the
    # input pauses.
    underived: list = []
    deriving: list = []

    def until_done(call, argument):
        """Runs in a writer thread: retry until ClickHouse takes it; the records stay unacknowledged."""
        delay = 0.5
        while True:
            try:
                result = call(argument)
                STORE_UP.set(1)
                return result
            except StoreError as exc:
                STORE_UP.set(0)
                FLUSH_FAILURES.inc()
                log.warning("ClickHouse write failed, retrying in %.1fs: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    processor.wait_for_writes = lambda: [future.result() for future, _, _ in in_flight]
    pending: dict = {}  # tp -> offsets processed since the last snapshot
    watch = StallWatch(settings.stall_warning_s, lambda: bool(pending or in_flight or underived or deriving))

    async def finish_in_flight() -> None:
        """Wait for the snapshot in flight and record it as stored; its records wait for its derived rows."""
        while in_flight:
            future, snapshot, offsets = in_flight[0]
            watch.stage = "waiting for ClickHouse to store the snapshot in flight"
            derived = await asyncio.wrap_future(future)
            in_flight.pop(0)
            processor.commit(snapshot)
            watch.stored()
            watch.stage = "publishing alerts"
            await publish_alerts()
            underived.append((offsets, derived, time.monotonic()))
        await finish_derived(wait=False)

    async def finish_derived(wait: bool) -> None:
        """Acknowledge the records of the pass in flight once it is done, and start the next pass over
        every snapshot stored since when it is due (`wait`: wait for the pass, start the next now)."""
        if deriving and (wait or deriving[0].done()):
            future, passed = deriving
            watch.stage = "waiting for ClickHouse to derive the rows stored"
            await asyncio.wrap_future(future)
            deriving.clear()
            watch.stage = "acknowledging stored records"
            for offsets in passed:
                for tp, tp_offsets in offsets.items():
                    acknowledge(app.consumer, tp, tp_offsets)
        now = time.monotonic()
        if underived and not deriving and (
                wait or now - underived[0][2] >= settings.derive_interval_s
                or now - last_record[0] >= settings.flush_interval_s):  # the input has paused
            work = Derived()
            for _, derived, _ in underived:
                work.update(derived)
            deriving[:] = [derive_executor.submit(until_done, deriver.derive, work), [o for o, _, _ in underived]]
            underived.clear()

    async def finish_writes() -> None:
        """Everything processed stored, derived and acknowledged; the caller holds the lock."""
        await finish_in_flight()
        while deriving or underived:
            await finish_derived(wait=True)

    async def publish_alerts() -> None:
        """Alerts go out once stored; the next snapshot records where they went."""
        rows = processor.take_unpublished()
        if not rows:
            return
        sent = await send_and_flush(settings.alerts_topic, [
            (key, value, partition % alert_partitions) for partition, key, value in alert_messages(rows)])
        processor.mark_published(rows, [metadata.offset for metadata in sent])

    async def send_and_flush(topic: str, messages) -> list:
        """(key, value, partition or None) to a topic, through the app's producer itself: a Faust
        topic's send() costs ~165 µs a message here, the producer's ~35. Returns their metadata."""
        producer = await app.maybe_start_producer()
        futures = [await producer.send(topic, key, value, partition, None, None) for key, value, partition in messages]
        await producer.flush()
        return [await future for future in futures]

    async def start_write(offsets) -> None:
        await finish_in_flight()
        watch.stage = "preparing a snapshot (reading rows that left memory)"
        snapshot = await read_with_retry(processor.prepare)  # reads only rows that left memory
        future = executor.submit(until_done, writer.insert, snapshot.batch)
        watch.writing()
        in_flight.append((future, snapshot, offsets))

    async def read_with_retry(call, *args):
        """Preparing a snapshot reads ClickHouse (rows that left memory): while it is unreachable,
        wait and retry; the records stay unacknowledged."""
        delay = 0.5
        while True:
            try:
                return call(*args)
            except StoreError as exc:
                STORE_UP.set(0)
                log.warning("ClickHouse read failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def apply_with_retry(topic: str, partition: int, records: list) -> list:
        """Processing reads ClickHouse (a partition's stored rows on take-over): while it is
        unreachable, wait and retry from the first record not applied; they stay unacknowledged."""
        delay = 0.5
        letters: list = []
        while True:
            try:
                return letters + processor.process_records(topic, partition, records)
            except Interrupted as exc:
                STORE_UP.set(0)
                log.warning("ClickHouse read failed, retrying in %.1fs: %s", delay, exc.__cause__)
                letters += exc.letters
                records = records[exc.applied:]
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    last_snapshot = [time.monotonic()]
    last_record = [time.monotonic()]

    def writing() -> bool:
        return bool(in_flight) and not in_flight[0][0].done()

    def snapshot_due() -> bool:
        if processor.pending_events() >= FLUSH_MAX_EVENTS:
            return True
        if writing():
            # Keep processing while the previous snapshot is written: waiting for it here left the
            # agent idle whenever ClickHouse took longer than the interval. The next one grows instead.
            return False
        return (
            held[0] >= settings.flush_max_records
            or time.monotonic() - last_snapshot[0] >= settings.flush_interval_s
        )

    held = [0]  # records in `pending`

    async def snapshot_pending() -> None:
        offsets = dict(pending)
        pending.clear()
        held[0] = 0
        last_snapshot[0] = time.monotonic()
        await start_write(offsets)

    @app.agent(source)
    async def subscription(stream):
        """Keeps Faust subscribed to the event topics; records reach `handle_records`, not this."""
        async for _ in stream.noack():
            pass

    async def handle_records(batch: dict, generation: int) -> dict:
        """A fetched batch {tp: [records]}, each partition's records applied in offset order, exactly
        as one record at a time (Processor.process_records); returns {tp: last offset applied}. Stops between partitions when a
        rebalance has begun (their records come again to whoever owns them)."""
        done: dict = {}
        letters: list = []
        async with lock:
            watch.stage = "processing records"
            for tp, records in batch.items():
                if app.consumer_generation_id != generation or not app.consumer.flow_active:
                    break
                topic, partition = tp.topic, tp.partition
                try:
                    letters += await apply_with_retry(topic, partition, records)
                except ProcessorFailure as failure:
                    # Like a kill: what was not committed is redelivered to the restarted worker.
                    log.critical("%s", failure, exc_info=failure.__cause__)
                    logging.shutdown()
                    os._exit(70)
                pending.setdefault(tp, []).extend(record.offset for record in records)
                held[0] += len(records)
                last = records[-1]
                done[tp] = last.offset
                end = app.consumer.highwater(tp)
                if end is not None:
                    behind = max(0, end - last.offset - 1)
                    LAG.labels(topic, str(partition)).set(behind)
                    LAG_SECONDS.labels(topic, str(partition)).set(
                        max(0.0, time.time() - last.timestamp / 1000) if behind else 0.0)
            if letters:  # out before their records are acknowledged
                watch.stage = "sending dead letters"
                await send_and_flush(settings.dead_letter_topic, [(key, value, None) for key, value in letters])
            last_record[0] = time.monotonic()
            if snapshot_due():
                await snapshot_pending()
            else:
                await finish_derived(wait=False)
            watch.stage = "waiting for records"
        return done

    app.handle_records = handle_records

    def idle_snapshot_due() -> bool:
        """The interval has passed, or the input has paused (a tenth of the interval without a
        record) and half of it has: the end of a burst or a replay is stored without waiting out
        the whole interval, and snapshots still come at most twice an interval."""
        now = time.monotonic()
        since_snapshot = now - last_snapshot[0]
        return since_snapshot >= settings.flush_interval_s or (
            since_snapshot >= settings.flush_interval_s / 2 and now - last_record[0] >= settings.flush_interval_s / 10)

    @app.timer(interval=max(0.05, settings.flush_interval_s / 10))
    async def write_when_idle() -> None:
        # No record arrived to trigger the snapshot or acknowledge a finished write: do it here.
        if lock.locked():
            return
        async with lock:
            processor.tick()
            if writing():
                await finish_derived(wait=False)
                return  # holding the lock until it is written would stall the agent
            if (pending or processor.has_alerts()) and idle_snapshot_due():
                await snapshot_pending()
            elif in_flight:
                await finish_in_flight()
            else:
                await finish_derived(wait=False)
            watch.stage = "waiting for records"

    async def store_all_held() -> None:
        """Store every record processed and acknowledge it; the caller holds the lock."""
        await finish_in_flight()
        if pending or processor.has_pending():
            await snapshot_pending()
        await finish_writes()

    async def store_held_records() -> None:
        async with lock:
            await store_all_held()

    app.store_held_records = store_held_records

    @app.timer(interval=RETENTION_EVERY_S, on_leader=False)
    async def keep_retention() -> None:
        """Whole months past retention leave ClickHouse (sinks/retention.py); every worker may do it."""
        try:
            dropped = await asyncio.get_running_loop().run_in_executor(
                None, apply_retention, processor.sink.store, settings.retention_days)
        except StoreError as exc:
            log.warning("retention: could not drop old partitions (will retry): %s", exc)
            return
        if dropped:
            log.info("retention: dropped %s", ", ".join(dropped))

    @app.task
    async def watch_for_stalls() -> None:
        watch.start()

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs) -> None:
        async with lock:
            await store_all_held()
            processor.release({(tp.topic, tp.partition) for tp in revoked})

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Start the worker; returns when it is stopped (SIGINT/SIGTERM)."""
    from faust.worker import Worker

    return_freed_memory()
    bootstrap = settings.require_kafka()
    clickhouse = settings.require_clickhouse()
    store = connect(clickhouse, settings.clickhouse_timeout_s)
    migrate(store)
    fill_lifecycle(store)
    if isinstance(store, ChdbStore):
        ChdbQueryServer(store)  # lets `opscentre kpi` read while this process holds the path
    ensure_topics(settings)
    ids = topic_ids(bootstrap, settings.event_topics)
    serve_metrics(settings)
    processor = Processor(
        settings, ids, ClickHouseSink(store), settings.require_pseudonym_key(),
        load_provinces(settings.provinces_file), clock=time.time,
        catalogue=load_catalogue(settings.catalogue_file),
    )
    writer = deriver = None
    if not clickhouse.startswith("chdb:"):
        writer = WriterProcess(clickhouse, settings.clickhouse_timeout_s)
        writer.start()
        deriver = ClickHouseSink(connect(clickhouse, settings.clickhouse_timeout_s))
    app = build_app(settings, processor, writer, deriver)
    # Rows wait in memory between writes; with the default thresholds the collector walks them
    # again and again. Freeze what start-up allocated and collect young objects less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
