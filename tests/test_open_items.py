"""Open items the overdue tracker loads from ClickHouse: receipts due in a range, less closed and alerted
ones, and the closings a take-over remembers, on ClickHouse 18.16 and chDB, for a new database and one
upgraded from before the item views; and the accepted ids a take-over reloads, in a database upgraded
from before ClickHouse copied them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from opscentre.clickhouse import connect, with_database
from sinks.clickhouse_sink import (MARK_COLUMNS, NO_MARKS_ROW, SERVICE_MINUTE, SERVICE_RAW_COLUMNS, ClickHouseSink,
                                   OpenItemsPurge, PurgeRound, WriteBatch)
from sinks.schema import ITEM_VIEWS, SCHEMA_VERSION, SEEN_COLUMNS, SEEN_VIEWS, UNHELD_CLOSING, migrate

HOUR = 3_600_000
T0 = 1_790_000_000_000


def service_row(event_id, event_type, item_id, occurred_ms, due_ms=0, partition=0, topic_id="topic-a"):
    row = dict.fromkeys(SERVICE_RAW_COLUMNS, "")
    row.update(
        event_id=event_id, event_type=event_type, item_id=item_id, occurred_ms=occurred_ms, due_ms=due_ms,
        province="01", agency="SO-TNMT", procedure_code="1.001" if event_type.startswith("dossier") else "",
        on_time=0, digitized=None, amount_vnd=0, satisfied=None, topic_id=topic_id, source_partition=partition,
        source_offset=int(event_id[1:]), item_index=0, record_ms=occurred_ms,
    )
    return tuple(row[name] for name in SERVICE_RAW_COLUMNS)


def history() -> list:
    """Receipts due at T0 + 1..6 h in partition 0, with closings before, after and without their due time."""
    return [
        service_row("e1", "dossier.received", "HS-1", T0, T0 + 1 * HOUR),              # open
        service_row("e2", "dossier.received", "HS-2", T0, T0 + 2 * HOUR),              # completed in time
        service_row("e3", "dossier.completed", "HS-2", T0 + HOUR, T0 + 2 * HOUR),
        service_row("e4", "dossier.received", "HS-3", T0, T0 + 3 * HOUR),              # completed late: open
        service_row("e5", "dossier.completed", "HS-3", T0 + 4 * HOUR, T0 + 3 * HOUR),
        service_row("e6", "dossier.received", "HS-4", T0, T0 + 4 * HOUR),              # cancelled
        service_row("e7", "dossier.cancelled", "HS-4", T0 + HOUR),
        service_row("e8", "feedback.received", "PA-1", T0, T0 + 5 * HOUR),             # open
        service_row("e9", "feedback.received", "PA-2", T0, T0 + 6 * HOUR),             # resolved
        service_row("e10", "feedback.resolved", "PA-2", T0 + HOUR, T0 + 6 * HOUR),
        service_row("e11", "dossier.completed", "HS-1", T0 + HOUR, T0 + HOUR, partition=1),  # another partition
        service_row("e12", "dossier.received", "HS-9", T0, T0 + 2 * HOUR, partition=1),
        service_row("e13", "dossier.received", "HS-1", T0, T0 + 30 * HOUR),  # received again, later due
    ]


def open_items(sink, after_ms, up_to_ms, partition=0) -> list:
    return sorted(sink.load_open_items("topic-a", partition, after_ms, up_to_ms))


def store_closed(sink, since_ms) -> list:
    return sorted(sink.load_alert_state("topic-a", 0, 0, since_ms)[2])


EXPECTED_0_TO_6H = [
    ("dossier", "HS-1", T0 + 1 * HOUR, "01", "SO-TNMT", "1.001"),
    ("dossier", "HS-3", T0 + 3 * HOUR, "01", "SO-TNMT", "1.001"),
    ("feedback", "PA-1", T0 + 5 * HOUR, "01", "SO-TNMT", ""),
]


def test_on_clickhouse_server(clickhouse_url):
    for number, check in enumerate(CHECKS):
        check(connect(with_database(clickhouse_url, f"{urlparse(clickhouse_url).path.strip('/')}_{number}")))


def test_on_embedded_chdb(tmp_path):
    # chDB opens one path per process, for the process's lifetime: a child keeps it from later tests.
    result = subprocess.run([sys.executable, "-m", "tests.test_open_items", f"chdb://{tmp_path}/chdb"],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]


def open_items_are_receipts_due_in_the_range_not_closed_in_time_nor_alerted(store):
    migrate(store)
    sink = ClickHouseSink(store)
    rows = history()
    sink.write_rows(WriteBatch(service_raw=rows))
    sink.write_rows(WriteBatch(service_raw=rows[:4]))  # stored twice: a retried write
    assert open_items(sink, None, T0 + 6 * HOUR) == EXPECTED_0_TO_6H
    assert open_items(sink, T0 + 1 * HOUR, T0 + 4 * HOUR) == EXPECTED_0_TO_6H[1:2]
    assert open_items(sink, T0 + 6 * HOUR, T0 + 40 * HOUR) == [
        ("dossier", "HS-1", T0 + 30 * HOUR, "01", "SO-TNMT", "1.001")]  # closed after its first due time only
    assert open_items(sink, None, T0 + 6 * HOUR, partition=1) == [
        ("dossier", "HS-9", T0 + 2 * HOUR, "01", "SO-TNMT", "1.001")]

    # What a worker taking the partition over remembers as closed lately: closings in time, by record time.
    closed = store_closed(sink, since_ms=T0)
    assert closed == [("dossier:HS-2", T0 + HOUR), ("dossier:HS-4", T0 + HOUR), ("feedback:PA-2", T0 + HOUR)]
    assert store_closed(sink, since_ms=T0 + 2 * HOUR) == []

    alert = dict(alert_id="dossier.overdue:x", type="dossier.overdue", kind="dossier", item_id="HS-3", item_ref="x",
                 province="01", agency="SO-TNMT", procedure_code="1.001", due_ms=T0 + 3 * HOUR,
                 detected_ms=T0 + 3 * HOUR, replayed=0, published=1, published_offset=0, topic_id="topic-a",
                 source_partition=0, source_offset=4, status="firing", resolved_ms=0)
    sink.write_rows(WriteBatch(alerts=[tuple(alert.values())]))
    assert open_items(sink, None, T0 + 6 * HOUR) == [EXPECTED_0_TO_6H[0], EXPECTED_0_TO_6H[2]]


def a_purge_forgets_items_closed_long_ago_under_every_topic_id(store):
    """The hourly purge: items closed before the offset stored, by a closing older than the horizon,
    leave open_items, with their receipts stored under the id of a topic since created again."""
    migrate(store)
    sink = ClickHouseSink(store)
    sink.write_rows(WriteBatch(service_raw=[
        service_row("e1", "dossier.received", "HS-1", T0, T0 + HOUR, topic_id="topic-old"),  # closed in topic-a
        service_row("e2", "dossier.received", "HS-2", T0, T0 + HOUR, topic_id="topic-old"),  # open
        service_row("e3", "dossier.completed", "HS-1", T0 + HOUR, T0 + HOUR),
        service_row("e4", "dossier.received", "HS-5", T0, T0 + HOUR),
        service_row("e5", "dossier.completed", "HS-5", T0 + HOUR, T0 + HOUR),
        service_row("e6", "dossier.received", "HS-6", T0, T0 + HOUR),  # open
        service_row("e7", "dossier.received", "HS-7", T0, T0 + HOUR, partition=1),  # another worker's
        service_row("e100", "dossier.completed", "HS-8", T0 + HOUR, T0 + HOUR),  # past the offset stored
        service_row("e9", "dossier.completed", "HS-9", T0 + 3 * HOUR, T0 + HOUR),  # within the horizon
    ]))
    sink.purge_open_items([OpenItemsPurge("topic-a", 0, 50, T0 + 2 * HOUR)])
    wait_for_mutations(store)
    assert sorted(store.query(f"SELECT topic_id, source_partition, item_id FROM {store.table('open_items')}")) == [
        ("topic-a", 0, "HS-6"), ("topic-a", 0, "HS-8"), ("topic-a", 0, "HS-9"), ("topic-a", 1, "HS-7"),
        ("topic-old", 0, "HS-2")]


def wait_for_mutations(store, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and int(store.query(
            f"SELECT count() FROM system.mutations WHERE database = '{store.database}' AND NOT is_done")[0][0]):
        time.sleep(0.2)


def a_round_of_purges_is_one_mutation_and_waits_for_the_last(store):
    """Every partition of two topics purged in one round, while ClickHouse holds the mutations back
    (as a busy server does): it would then apply them to each part in one pass, which 18.16 gets
    wrong when each reads its own subquery. Only what is still open is left, and a round sent while
    the last one runs waits for the next."""
    migrate(store)
    sink = ClickHouseSink(store)
    offsets = iter(range(1, 10**6))

    def rows(topic_id, partition, first, last, event_type):
        return [service_row(f"e{next(offsets)}", event_type, f"HS-{topic_id}-{partition}-{n}", T0, T0 + HOUR,
                            partition=partition, topic_id=topic_id) for n in range(first, last)]

    for topic_id in ("topic-old", "topic-a"):
        for first in range(0, 40, 10):  # a part per write: receipts, and the closings of the write before
            sink.write_rows(WriteBatch(service_raw=[
                row for partition in range(4) for row in rows(topic_id, partition, first, first + 10, "dossier.received")
                + rows(topic_id, partition, max(0, first - 10), first, "dossier.completed")]))
    store.execute(f"INSERT INTO {store.table('open_items_purges')} (purge_id, topic_id, staged_at) "
                  "SELECT 1, 'topic-a', now() - 86400 * 2")  # a purge's rows from days ago
    purges = [OpenItemsPurge(topic_id, partition, 10**6, T0 + 2 * HOUR)
              for topic_id in ("topic-old", "topic-a") for partition in range(4)]
    # chDB runs a mutation before ALTER returns (mutations_sync = 1): nothing is held back there.
    held = not store.query("SELECT value FROM system.settings WHERE name = 'mutations_sync' AND value != '0'")
    if held:
        store.execute(f"SYSTEM STOP MERGES {store.table('open_items')}")
    try:
        # 30 items closed in each, a receipt and a closing each
        assert sink.purge_open_items(purges) == PurgeRound(2 * 4 * 60, complete=True)
        if held:
            assert sink.purge_open_items(purges) is None
    finally:
        if held:
            store.execute(f"SYSTEM START MERGES {store.table('open_items')}")
    wait_for_mutations(store)
    left = store.query(f"SELECT topic_id, source_partition, closed, count() FROM {store.table('open_items')} "
                       "GROUP BY topic_id, source_partition, closed ORDER BY topic_id, source_partition")
    assert left == [(topic_id, partition, 0, 10) for topic_id in ("topic-a", "topic-old") for partition in range(4)]
    assert store.query(f"SELECT count() FROM {store.table('open_items_purges')} WHERE purge_id = 1") == [(0,)]
    assert sink.purge_open_items(purges) == PurgeRound(0, complete=True)


def a_round_takes_whole_items_up_to_its_bound(store):
    """A round stages the rows of a bounded number of items (what keeps a mutation's memory bounded):
    every item it takes leaves whole, receipt and closing, so no closing is left without its receipt
    between two rounds, and the rounds until one is complete leave exactly the items still open."""
    migrate(store)
    sink = ClickHouseSink(store)
    offsets = iter(range(1, 10**6))
    for partition in range(2):
        receipts = [service_row(f"e{next(offsets)}", "dossier.received", f"HS-{partition}-{n}", T0, T0 + HOUR,
                                partition=partition) for n in range(40)]
        closings = [service_row(f"e{next(offsets)}", "dossier.completed", f"HS-{partition}-{n}", T0 + HOUR, T0 + HOUR,
                                partition=partition) for n in range(25)]
        sink.write_rows(WriteBatch(service_raw=receipts + closings))
    purges = [OpenItemsPurge("topic-a", partition, 10**6, T0 + 2 * HOUR) for partition in range(2)]
    rounds = []
    while not rounds or not rounds[-1].complete:
        rounds.append(sink.purge_open_items(purges, items_per_round=20))  # 10 items of each partition
        wait_for_mutations(store)
        assert store.query(f"SELECT count() FROM (SELECT item_id FROM {store.table('open_items')} "
                           "GROUP BY item_id HAVING min(closed) > 0)") == [(0,)]
    assert rounds == [PurgeRound(40, False), PurgeRound(40, False), PurgeRound(20, True)]
    left = store.query(f"SELECT source_partition, closed, count() FROM {store.table('open_items')} "
                       "GROUP BY source_partition, closed ORDER BY source_partition")
    assert left == [(0, 0, 15), (1, 0, 15)]


def a_database_from_before_the_item_views_is_backfilled_once(store):
    migrate(store)
    for view, (target, _) in ITEM_VIEWS.items():
        store.execute(f"DROP TABLE {store.table(view)}")
        store.execute(f"DROP TABLE {store.table(target)}")
    store.execute(f"DROP TABLE {store.table('schema_migrations')}")
    sink = ClickHouseSink(store)
    sink.write_rows(WriteBatch(service_raw=history()))  # stored by a worker of schema 2

    assert migrate(store) == SCHEMA_VERSION
    assert open_items(sink, None, T0 + 6 * HOUR) == EXPECTED_0_TO_6H
    receipts = store.query(f"SELECT count() FROM {store.table('item_receipts')}")[0][0]
    migrate(store)
    assert store.query(f"SELECT count() FROM {store.table('item_receipts')}")[0][0] == receipts  # not copied again
    sink.write_rows(WriteBatch(service_raw=[service_row("e20", "dossier.received", "HS-20", T0, T0 + 2 * HOUR)]))
    assert ("dossier", "HS-20", T0 + 2 * HOUR, "01", "SO-TNMT", "1.001") in open_items(sink, None, T0 + 6 * HOUR)


def accepted_ids_stored_before_the_seen_views_are_kept_and_new_ones_copied(store):
    migrate(store)
    for view in SEEN_VIEWS:
        store.execute(f"DROP TABLE {store.table(view)}")
    sink = ClickHouseSink(store)
    old = [service_row(f"e{n}", "dossier.received", f"HS-{n}", T0 + n, T0 + HOUR) for n in (1, 2)]
    sink.write_rows(WriteBatch(service_raw=old))  # a worker of schema 3 stored its ids itself
    store.insert("seen_event_ids", list(SEEN_COLUMNS), [["topic-a"] * 2, [0, 0], [T0 + 1, T0 + 2], [1, 2], ["e1", "e2"]])

    assert migrate(store) == SCHEMA_VERSION
    sink.write_rows(WriteBatch(service_raw=[service_row("e3", "dossier.received", "HS-3", T0 + 3, T0 + HOUR)]))
    taken_over = sink.load_partition(SERVICE_MINUTE, "topic-a", 0, first_offset=4, first_record_ms=T0 + 10,
                                     horizon_ms=HOUR)
    assert taken_over.seen == [("e1", T0 + 1), ("e2", T0 + 2), ("e3", T0 + 3)]
    assert sink.load_partition(SERVICE_MINUTE, "topic-a", 0, 3, T0 + 10, HOUR).seen == [("e1", T0 + 1), ("e2", T0 + 2)]


def a_closing_is_filed_under_its_items_agency_once_the_view_is_replaced(store):
    """Schema 10: a closing the worker marked with its item's province and agency is filed under
    them, one it did not hold under its own as an unheld closing; the view of schema 9 is replaced,
    and each new row lands once."""
    migrate(store)
    store.execute(f"DROP TABLE {store.table('open_items_attributed_mv')}")
    store.execute(f"CREATE MATERIALIZED VIEW {store.table('open_items_mv')} TO {store.table('open_items')} AS SELECT "
                  "topic_id, source_partition, if(event_type LIKE 'dossier.%', 'dossier', 'feedback') AS kind, item_id, "
                  "event_type IN ('dossier.completed', 'dossier.cancelled', 'feedback.resolved') AS closed, "
                  "source_offset, item_index, occurred_ms, due_ms, record_ms, province, agency, procedure_code "
                  f"FROM {store.table('service_events')} WHERE event_type LIKE '%.received' OR event_type IN "
                  "('dossier.completed', 'dossier.cancelled', 'feedback.resolved')")  # as schema 9 created it
    assert migrate(store) == SCHEMA_VERSION
    views = {name for (name,) in store.query(f"SELECT name FROM system.tables WHERE database = '{store.database}'")}
    assert "open_items_mv" not in views and "open_items_attributed_mv" in views

    def by(agency, marked, *row):
        values = dict(zip(SERVICE_RAW_COLUMNS, service_row(*row)), agency=agency)
        marks = dict(zip(MARK_COLUMNS, NO_MARKS_ROW))
        if marked:
            marks.update(lc_open_left_ms=row[3], lc_open_left=1, lc_province="01", lc_agency="SO-TNMT",
                         lc_procedure="1.001")
        return tuple(values.values()) + tuple(marks.values())

    store.insert("service_events", list(SERVICE_RAW_COLUMNS + MARK_COLUMNS), list(zip(*[
        by("SO-TNMT", True, "e1", "dossier.received", "HS-1", T0, T0 + HOUR),
        by("TTPVHCC", True, "e2", "dossier.completed", "HS-1", T0 + 2 * HOUR, T0 + HOUR),  # the worker held HS-1
        by("TTPVHCC", False, "e3", "dossier.completed", "HS-2", T0 + 2 * HOUR, T0 + HOUR),  # it did not hold HS-2
    ])))
    rows = store.query(f"SELECT item_id, closed, province, agency, procedure_code FROM {store.table('open_items')} "
                       "ORDER BY source_offset")
    assert rows == [("HS-1", 0, "01", "SO-TNMT", "1.001"), ("HS-1", 1, "01", "SO-TNMT", "1.001"),
                    ("HS-2", UNHELD_CLOSING, "01", "TTPVHCC", "1.001")]


CHECKS = [open_items_are_receipts_due_in_the_range_not_closed_in_time_nor_alerted,
          a_purge_forgets_items_closed_long_ago_under_every_topic_id,
          a_round_of_purges_is_one_mutation_and_waits_for_the_last,
          a_round_takes_whole_items_up_to_its_bound,
          a_closing_is_filed_under_its_items_agency_once_the_view_is_replaced,
          a_database_from_before_the_item_views_is_backfilled_once,
          accepted_ids_stored_before_the_seen_views_are_kept_and_new_ones_copied]

if __name__ == "__main__":
    for number, check in enumerate(CHECKS):
        check(connect(with_database(sys.argv[1], f"t{number}")))
