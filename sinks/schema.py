"""ClickHouse schema, created or upgraded by `opscentre db migrate`.

The same statements run on ClickHouse 18.16 (Debian's server) and on current
releases; features the old server lacks are switched on by server version.

Idempotence lives in the keys:
- raw tables are ReplacingMergeTree keyed by the event's source position
  (topic id, partition, offset, item index): writing a record twice leaves one row;
- per-minute tables hold, per (dimensions, minute, source partition), the
  cumulative count of that partition's events, versioned by the highest source
  offset applied: a replay rewrites the same row, the newest version wins.
Readers use FINAL (or argMax by version) and sum across partitions.
"""

from __future__ import annotations

import logging
import re
import time

from opscentre.clickhouse import Store
from opscentre.measures import LIFECYCLE_COUNTERS, SECURITY_COUNTERS, SERVICE_COUNTERS

from .clickhouse_sink import (
    GRAINS,
    LIFECYCLE_MINUTE,
    MARK_COLUMNS,
    MINUTE,
    SECURITY_MINUTE,
    SERVICE_MINUTE,
    ClickHouseSink,
    grain_table,
)

logger = logging.getLogger(__name__)

# Partitions of the rollup tables: a month of hours, a year of days, all months in one.
_ROLLUP_PARTITIONS = {"hour": "toYYYYMM(window_start)", "day": "toYear(window_start)", "month": "tuple()"}

SCHEMA_VERSION = 11
ITEM_VIEWS_SINCE = 3  # the version that added them; databases older than it are backfilled
REDACTED_SINCE = 5  # rejected_events keeps no personal identifier from this version on
ROLLUPS_SINCE = 6  # hour, day and month rows; databases older than it are filled from their minute rows
LIFECYCLE_SINCE = 7  # lifecycle edges and counts; older databases are filled once from their events (below)
ITEM_HISTORY_SINCE = 8  # item_events, one item's events by id; older databases are filled once
SORTING_KEYS_SINCE = 9  # sorting keys for the read side (REKEYED, below); older tables keep theirs
ATTRIBUTED_CLOSINGS_SINCE = 10  # open_items files a closing under its item's agency (OPEN_ITEMS_VIEW)
PURGE_STAGING_SINCE = 11  # open_items_purges: the rows a purge deletes, staged (ClickHouseSink.purge_open_items)

# What the overdue tracker loads (streams.overdue): receipts by due time and closings by item, kept
# by materialized views from service_events, so that loading the items due in the next hour, or a
# partition's recent closings on take-over, reads that partition's rows instead of every province's
# history.
_ITEM_KIND = "if(event_type LIKE 'dossier.%', 'dossier', 'feedback')"
_RECEIPTS = "event_type IN ('dossier.received', 'feedback.received')"
_CLOSINGS = "event_type IN ('dossier.completed', 'dossier.cancelled', 'feedback.resolved')"
ITEM_VIEWS = {
    "item_receipts_mv": ("item_receipts", f"""SELECT topic_id, source_partition, due_ms, {_ITEM_KIND} AS kind, item_id,
       province, agency, procedure_code
FROM {{source}} WHERE {_RECEIPTS}"""),
    "item_closings_mv": ("item_closings", f"""SELECT topic_id, source_partition, {_ITEM_KIND} AS kind, item_id, occurred_ms,
       record_ms, (event_type = 'dossier.cancelled' OR occurred_ms <= due_ms) AS in_time
FROM {{source}} WHERE {_CLOSINGS}"""),
}


# The lifecycle transitions each service event row carries (MARK_COLUMNS, written by the worker:
# streams.lifecycle), one edge row each, under the item's province, agency and procedure.
_KIND = "if(event_type LIKE 'dossier.%', 'dossier', 'feedback')"
LIFECYCLE_EDGES_VIEW = f"""SELECT edge.1 AS at_ms, if(lc_province = '', province, lc_province) AS province,
       if(lc_province = '', agency, lc_agency) AS agency, if(lc_province = '', procedure_code, lc_procedure) AS procedure_code,
       {_KIND} AS kind, edge.2 AS family, edge.3 AS direction, edge.4 AS weight,
       topic_id, source_partition, source_offset, item_index
FROM {{source}}
ARRAY JOIN arrayFilter(e -> e.4 != 0, [
    (lc_open_entered_ms, 'open', 'entered', lc_open_entered), (lc_open_left_ms, 'open', 'left', lc_open_left),
    (lc_overdue_entered_ms, 'overdue', 'entered', lc_overdue_entered),
    (lc_overdue_left_ms, 'overdue', 'left', lc_overdue_left)]) AS edge
WHERE lc_open_entered != 0 OR lc_open_left != 0 OR lc_overdue_entered != 0 OR lc_overdue_left != 0"""
# Receipts and closings by item, what a worker taking a partition over rebuilds its open items from
# (streams.lifecycle); items closed long enough ago are deleted from it (purge_open_items). A closing
# is filed under its item's province, agency and procedure when the worker held the item (the marks);
# one it did not hold (dated before its receipt, say) under its own, as closed = UNHELD_CLOSING. So an
# agency's overdue list reads that agency's rows and the unheld closings (dashboards.drilldown), which
# the purge keeps to the last hour or so: not every province's closings.
UNHELD_CLOSING = 2
OPEN_ITEMS_VIEW = f"""SELECT topic_id, source_partition, {_KIND} AS kind, item_id,
       if({_CLOSINGS}, if(lc_province = '', {UNHELD_CLOSING}, 1), 0) AS closed, source_offset,
       item_index, occurred_ms, due_ms, record_ms, if(lc_province = '', province, lc_province) AS province,
       if(lc_province = '', agency, lc_agency) AS agency, if(lc_province = '', procedure_code, lc_procedure) AS procedure_code
FROM {{source}} WHERE {_RECEIPTS} OR {_CLOSINGS}"""

# One dossier's or feedback item's events, ordered by its id: a drill-down reads its own rows, not the history.
ITEM_HISTORY_VIEW = """SELECT item_id, event_type, occurred_ms, due_ms, province, agency, procedure_code, service_level,
       channel, result, on_time, method, amount_vnd, satisfied, topic_id, source_partition, source_offset, item_index
FROM {source} WHERE item_id != ''"""

# Accepted ids by arrival (see seen_event_ids), kept by ClickHouse from the raw tables instead of
# inserted beside them: the writer encodes each id once, not twice (schema 4; earlier workers
# inserted them, and what they stored stays).
SEEN_COLUMNS = ("topic_id", "source_partition", "record_ms", "source_offset", "event_id")
_SEEN = f"SELECT {', '.join(SEEN_COLUMNS)} FROM {{source}}"
SEEN_VIEWS = {"seen_service_ids_mv": "service_events", "seen_security_ids_mv": "security_events"}


ALERTS_TABLE = """CREATE TABLE IF NOT EXISTS {db}.{name} (
    alert_id String,
    type {lc},
    kind {lc},
    item_id String,
    item_ref String,
    province {lc},
    agency {lc},
    procedure_code {lc},
    due_ms UInt64,
    due_at DateTime('UTC') ALIAS toDateTime(intDiv(due_ms, 1000)),
    detected_ms UInt64,
    detected_at DateTime('UTC') DEFAULT toDateTime(intDiv(detected_ms, 1000)),
    replayed UInt8,
    published UInt8,
    published_offset Int64,
    topic_id {lc},
    source_partition UInt16,
    source_offset UInt64,
    status {lc},
    resolved_ms UInt64,
    written_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree(published)
PARTITION BY toYYYYMM(toDateTime(intDiv(due_ms, 1000)))
ORDER BY (kind, province, item_id, status)"""
_ALERT_COPY = ("alert_id, type, kind, item_id, item_ref, province, agency, procedure_code, due_ms, detected_ms, replayed, "
               "published, published_offset, topic_id, source_partition, source_offset")


def _alerts_with_status(store: Store, version: tuple[int, ...]) -> None:  # a single server
    """alerts was keyed by item alone before resolutions (schema 7): rebuilt keyed by item and status,
    its rows firing. Workers must be stopped meanwhile (README, "Upgrades")."""
    (key,) = store.query(f"SELECT sorting_key FROM system.tables WHERE database = '{store.database}' "
                         "AND name = 'alerts'")[0]
    if "status" in key:
        return
    lc = _types(version)["LC"]
    store.execute(f"DROP TABLE IF EXISTS {store.table('alerts_v7')}")
    store.execute(ALERTS_TABLE.format(db=store.database, lc=lc, name="alerts_v7"))
    store.execute(f"INSERT INTO {store.table('alerts_v7')} ({_ALERT_COPY}, status, resolved_ms) "
                  f"SELECT {_ALERT_COPY}, 'firing', 0 FROM {store.table('alerts')} FINAL")
    store.execute(f"RENAME TABLE {store.table('alerts')} TO {store.table('alerts_v6')}, "
                  f"{store.table('alerts_v7')} TO {store.table('alerts')}")
    store.execute(f"DROP TABLE {store.table('alerts_v6')}")


def _types(version: tuple[int, ...]) -> dict[str, str]:
    modern = version >= (20, 1)
    return {
        "LC": "LowCardinality(String)" if modern else "String",
    }


def statements(database: str, server_version: tuple[int, ...]) -> list[str]:
    t = _types(server_version)
    lc = t["LC"]
    marks = ",\n    ".join(f"{name} {kind}" for name, kind in mark_columns(server_version).items())
    service_counters = ",\n    ".join(f"{name} UInt64" for name in SERVICE_COUNTERS)
    security_counters = ",\n    ".join(f"{name} UInt64" for name in SECURITY_COUNTERS)
    lifecycle_counters = ",\n    ".join(f"{name} Int64" for name in LIFECYCLE_COUNTERS)
    db = database
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.service_events (
    event_id String,
    event_type {lc},
    occurred_ms UInt64,
    occurred_at DateTime('UTC') DEFAULT toDateTime(intDiv(occurred_ms, 1000)),
    province {lc},
    agency {lc},
    source {lc},
    item_id String,
    procedure_code {lc},
    service_level {lc},
    channel {lc},
    due_ms UInt64,
    due_at DateTime('UTC') ALIAS toDateTime(intDiv(due_ms, 1000)),
    on_time UInt8,
    result {lc},
    digitized Nullable(UInt8),
    amount_vnd UInt64,
    method {lc},
    satisfied Nullable(UInt8),
    direction {lc},
    applicant_hash String,
    topic_id {lc},
    source_partition UInt16,
    source_offset UInt64,
    item_index Int32,
    record_ms UInt64,
    written_at DateTime('UTC') DEFAULT now(),
    {marks}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toStartOfHour(occurred_at), province, event_type, occurred_at, topic_id, source_partition, source_offset, item_index)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.security_events (
    event_id String,
    occurred_ms UInt64,
    occurred_at DateTime('UTC') DEFAULT toDateTime(intDiv(occurred_ms, 1000)),
    province {lc},
    agency {lc},
    source {lc},
    category {lc},
    severity UInt8,
    action {lc},
    sensor {lc},
    dst_asset String,
    src_ip String,
    rule_id String,
    technique {lc},
    count UInt32,
    topic_id {lc},
    source_partition UInt16,
    source_offset UInt64,
    item_index Int32,
    record_ms UInt64,
    written_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toStartOfHour(occurred_at), province, occurred_at, topic_id, source_partition, source_offset, item_index)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.service_minute (
    window_start DateTime('UTC'),
    province {lc},
    agency {lc},
    topic_id {lc},
    source_partition UInt16,
    version UInt64,
    {service_counters},
    written_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (toStartOfHour(window_start), province, agency, window_start, topic_id, source_partition)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.security_minute (
    window_start DateTime('UTC'),
    province {lc},
    category {lc},
    severity UInt8,
    action {lc},
    sensor {lc},
    technique {lc},
    topic_id {lc},
    source_partition UInt16,
    version UInt64,
    {security_counters},
    written_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (toStartOfHour(window_start), province, window_start, category, severity, action, sensor, technique, topic_id,
          source_partition)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.rejected_events (
    topic String,
    topic_id {lc},
    source_partition UInt16,
    source_offset UInt64,
    item_index Int32,
    record_ms UInt64,
    rejected_at DateTime('UTC'),
    reason String,
    original String,  -- the contract's fields of an event object, personal ones pseudonymised; else ''
    original_bytes UInt32,
    original_digest String  -- HMAC-SHA256 of the original bytes with the pseudonym key
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(rejected_at)
ORDER BY (topic_id, source_partition, source_offset, item_index)""",
        # Ids of accepted events by arrival, to rebuild the de-duplication
        # memory of a partition when a worker takes it over (filled by SEEN_VIEWS).
        f"""CREATE TABLE IF NOT EXISTS {db}.seen_event_ids (
    topic_id {lc},
    source_partition UInt16,
    record_ms UInt64,
    source_offset UInt64,
    event_id String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(toDateTime(intDiv(record_ms, 1000)))
ORDER BY (topic_id, source_partition, record_ms)""",
        # One row per overdue item and status (ReplacingMergeTree on both): "firing" when it went overdue,
        # "resolved" when closed after; published = 1 once the message is on the alerts topic, so a
        # worker taking the partition over re-sends only the others.
        ALERTS_TABLE.format(db=db, lc=lc, name="alerts"),
        # Rows are identical when an event is stored twice; readers take any()/min() per item.
        f"""CREATE TABLE IF NOT EXISTS {db}.item_receipts (
    topic_id {lc},
    source_partition UInt16,
    due_ms UInt64,
    kind {lc},
    item_id String,
    province {lc},
    agency {lc},
    procedure_code {lc}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(due_ms, 1000)))
ORDER BY (topic_id, source_partition, due_ms, kind, item_id, province, agency, procedure_code)""",
        # Small granules: a load looks up a few thousand items scattered through the partition's closings.
        f"""CREATE TABLE IF NOT EXISTS {db}.item_closings (
    topic_id {lc},
    source_partition UInt16,
    kind {lc},
    item_id String,
    occurred_ms UInt64,
    record_ms UInt64,
    in_time UInt8  -- cancelled, or completed/resolved at or before the due time it carries
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(occurred_ms, 1000)))
ORDER BY (topic_id, source_partition, kind, item_id, occurred_ms)
SETTINGS index_granularity = 1024""",
        # The lifecycle of every dossier and feedback item, from its events in any order.
        # Times are epoch ms, 0 when the event has not been seen.
        f"""CREATE VIEW IF NOT EXISTS {db}.dossier_lifecycle AS
SELECT
    item_id AS dossier_id,
    if(countIf(event_type = 'dossier.received') > 0, anyIf(province, event_type = 'dossier.received'), any(province)) AS province,
    if(countIf(event_type = 'dossier.received') > 0, anyIf(agency, event_type = 'dossier.received'), any(agency)) AS agency,
    anyIf(procedure_code, procedure_code != '') AS procedure_code,
    anyIf(service_level, event_type = 'dossier.received') AS service_level,
    minIf(occurred_ms, event_type = 'dossier.received') AS received_ms,
    if(countIf(event_type = 'dossier.received') > 0, minIf(due_ms, event_type = 'dossier.received'),
       maxIf(due_ms, event_type = 'dossier.completed')) AS due_ms,
    minIf(occurred_ms, event_type = 'dossier.completed') AS completed_ms,
    minIf(occurred_ms, event_type = 'dossier.cancelled') AS cancelled_ms,
    countIf(event_type = 'dossier.received') > 0 AS received,
    countIf(event_type = 'dossier.completed') > 0 AS completed,
    countIf(event_type = 'dossier.cancelled') > 0 AS cancelled,
    maxIf(on_time, event_type = 'dossier.completed') AS completed_on_time,
    countIf(event_type = 'payment.completed' AND method = 'online') > 0 AS paid_online
FROM {db}.service_events FINAL
WHERE event_type IN ('dossier.received', 'dossier.completed', 'dossier.cancelled', 'payment.completed')
GROUP BY item_id""",
        f"""CREATE VIEW IF NOT EXISTS {db}.feedback_lifecycle AS
SELECT
    item_id AS feedback_id,
    any(province) AS province,
    any(agency) AS agency,
    anyIf(channel, event_type = 'feedback.received') AS channel,
    minIf(occurred_ms, event_type = 'feedback.received') AS received_ms,
    if(countIf(event_type = 'feedback.received') > 0, minIf(due_ms, event_type = 'feedback.received'),
       max(due_ms)) AS due_ms,
    minIf(occurred_ms, event_type = 'feedback.resolved') AS resolved_ms,
    countIf(event_type = 'feedback.received') > 0 AS received,
    countIf(event_type = 'feedback.resolved') > 0 AS resolved,
    maxIf(on_time, event_type = 'feedback.resolved') AS resolved_on_time,
    maxIf(satisfied, event_type = 'feedback.resolved') AS satisfied
FROM {db}.service_events FINAL
WHERE event_type IN ('feedback.received', 'feedback.resolved')
GROUP BY item_id""",
        f"""CREATE TABLE IF NOT EXISTS {db}.lifecycle_edges (
    at_ms UInt64,
    province {lc},
    agency {lc},
    procedure_code {lc},
    kind {lc},
    family {lc},
    direction {lc},
    weight Int8,
    topic_id {lc},
    source_partition UInt16,
    source_offset UInt64,
    item_index Int32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(at_ms, 1000)))
ORDER BY (intDiv(at_ms, 3600000), province, at_ms, topic_id, source_partition, source_offset, item_index, family, direction)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.lifecycle_minute (
    window_start DateTime('UTC'),
    province {lc},
    agency {lc},
    procedure_code {lc},
    topic_id {lc},
    source_partition UInt16,
    version UInt64,
    {lifecycle_counters},
    written_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (toStartOfHour(window_start), province, agency, procedure_code, window_start, topic_id, source_partition)""",
        # A take-over reads its source partition (the table's partitions); an agency's overdue list
        # reads that agency's rows and the unheld closings (the sorting key; OPEN_ITEMS_VIEW).
        f"""CREATE TABLE IF NOT EXISTS {db}.open_items (
    topic_id {lc},
    source_partition UInt16,
    kind {lc},
    item_id String,
    closed UInt8,
    source_offset UInt64,
    item_index Int32,
    occurred_ms UInt64,
    due_ms UInt64,
    record_ms UInt64,
    province {lc},
    agency {lc},
    procedure_code {lc}
) ENGINE = MergeTree
PARTITION BY source_partition
ORDER BY (kind, closed, province, agency, item_id, source_offset)""",
        # The open_items rows each purge deletes, read by its mutation until it is done; a day's
        # partition is dropped the next day, when no purge is running.
        f"""CREATE TABLE IF NOT EXISTS {db}.open_items_purges (
    purge_id UInt64,
    topic_id {lc},
    source_partition UInt16,
    source_offset UInt64,
    item_index Int32,
    staged_at DateTime('UTC') DEFAULT now()
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(staged_at)
ORDER BY (purge_id, topic_id, source_partition, source_offset, item_index)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.item_events (
    item_id String,
    event_type {lc},
    occurred_ms UInt64,
    due_ms UInt64,
    province {lc},
    agency {lc},
    procedure_code {lc},
    service_level {lc},
    channel {lc},
    result {lc},
    on_time UInt8,
    method {lc},
    amount_vnd UInt64,
    satisfied Nullable(UInt8),
    topic_id {lc},
    source_partition UInt16,
    source_offset UInt64,
    item_index Int32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(occurred_ms, 1000)))
ORDER BY (item_id, occurred_ms, topic_id, source_partition, source_offset, item_index)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    applied_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree
ORDER BY version""",
    ]


def _add_columns(store: Store, table: str, columns: dict) -> None:
    """Columns a table created by an earlier version lacks (18.16 has no ADD COLUMN IF NOT EXISTS); on a
    cluster, on every node, the local table and the Distributed one."""
    for node in store.nodes():
        for name in ((table + "_local", table) if store.cluster else (table,)):
            have = {column for (column,) in node.query(
                f"SELECT name FROM system.columns WHERE database = '{node.database}' AND table = '{name}'")}
            for column, kind in columns.items():
                if column not in have:
                    node.execute(f"ALTER TABLE {node.table(name)} ADD COLUMN {column} {kind}")


def mark_columns(server_version: tuple[int, ...]) -> dict:
    lc = _types(server_version)["LC"]
    return {name: (lc if name in ("lc_province", "lc_agency", "lc_procedure") else
                   "Int8" if not name.endswith("_ms") else "UInt64") for name in MARK_COLUMNS}


def rollup_statements(database: str, server_version: tuple[int, ...]) -> list[str]:
    """The hour, day and month tables: the minute tables' columns and keys, coarser buckets."""
    created = []
    for table in (SERVICE_MINUTE, SECURITY_MINUTE, LIFECYCLE_MINUTE):
        source = next(sql for sql in statements(database, server_version) if f".{table.name} (" in sql)
        for grain in GRAINS[1:]:
            sql = source.replace(f".{table.name} (", f".{grain_table(table, grain)} (")
            sql = sql.replace("PARTITION BY toYYYYMM(window_start)", f"PARTITION BY {_ROLLUP_PARTITIONS[grain.name]}")
            sql = sql.replace(f"ORDER BY ({MINUTE.key.column}, ",
                              f"ORDER BY ({grain.key.column}, " if grain.key.column else "ORDER BY (")
            created.append(sql)
    return created


_MATERIALIZED = (
    *((view, target, "service_events", select) for view, (target, select) in ITEM_VIEWS.items()),
    *((view, "seen_event_ids", source, _SEEN) for view, source in SEEN_VIEWS.items()),
    ("lifecycle_edges_mv", "lifecycle_edges", "service_events", LIFECYCLE_EDGES_VIEW),
    ("open_items_attributed_mv", "open_items", "service_events", OPEN_ITEMS_VIEW),
    ("item_events_mv", "item_events", "service_events", ITEM_HISTORY_VIEW),
)
_TABLE_NAME = re.compile(r"CREATE TABLE IF NOT EXISTS \w+\.(\w+) \(")
_ENGINE = re.compile(r"ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?")


def migrate(store: Store) -> int:
    """Create or upgrade the schema; returns the schema version. Safe to run twice."""
    version = store.server_version()
    created = statements(store.database, version) + rollup_statements(store.database, version)
    if store.cluster:
        _create_on_cluster(store, created)
    else:
        for sql in created:
            store.execute(sql)
    for view, target, source, select in _MATERIALIZED:
        for node in store.nodes():
            node.execute(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {node.table(view)} TO {node.local(target)} AS "
                         + select.format(source=node.local(source)))
    for node in store.nodes():
        # The view before ATTRIBUTED_CLOSINGS_SINCE, dropped once its successor writes: a row stored
        # meanwhile lands twice, which open_items' readers absorb (a repeated receipt or closing). Its
        # older closings under their own agency leave with the purge, an hour or so after they closed.
        node.execute(f"DROP TABLE IF EXISTS {node.table('open_items_mv')}")
    _add_columns(store, "rejected_events", {"original_bytes": "UInt32", "original_digest": "String"})
    if not store.cluster:  # a cluster is created keyed by status already
        _alerts_with_status(store, version)
    _add_columns(store, "service_events", mark_columns(version))
    applied = {int(v) for (v,) in store.query(f"SELECT version FROM {store.table('schema_migrations')}")}
    if ITEM_VIEWS_SINCE not in applied:
        # Events stored before the views existed are copied once. Events a worker stores meanwhile
        # may land twice, which the readers' any()/min() per item absorb (and merges remove).
        for target, select in ITEM_VIEWS.values():
            store.execute(f"INSERT INTO {store.table(target)} "
                          + select.format(source=store.table("service_events") + " FINAL"))
    # Rows stored before REDACTED_SINCE may hold identifiers in clear: their originals are dropped, and
    # the reasons that could repeat content are cut. Rows stored since always have a digest.
    (unredacted,) = store.query(f"SELECT count() FROM {store.table('rejected_events')} WHERE original_digest = ''")[0]
    for node in store.nodes() if int(unredacted) else ():
        node.execute(
            f"ALTER TABLE {node.local('rejected_events')} UPDATE original = '', reason = multiIf("
            "startsWith(reason, 'field \\'applicant_id\\''), 'field \\'applicant_id\\': (removed on upgrade)', "
            "position(reason, 'not a JSON event object') > 0, "
            "concat(substring(reason, 1, position(reason, 'not a JSON event object') + 22), ' (removed on upgrade)'), "
            "reason) WHERE original_digest = ''")
    if ITEM_HISTORY_SINCE not in applied:
        # Events stored before item_events existed are copied once (a repeat is one row: its key).
        store.execute(f"INSERT INTO {store.table('item_events')} "
                      + ITEM_HISTORY_VIEW.format(source=store.table("service_events") + " FINAL"))
    if ROLLUPS_SINCE not in applied:
        # Minute rows stored before the rollups existed: every bucket of theirs is computed once.
        sink = ClickHouseSink(store)
        for table in (SERVICE_MINUTE, SECURITY_MINUTE):
            for topic_id, partition in store.query(
                    f"SELECT DISTINCT topic_id, source_partition FROM {store.table(table.name)}"):
                sink.recompute_partition_rollups(table, topic_id, int(partition), 0)
    # LIFECYCLE_SINCE is recorded by streams.lifecycle.fill(), which computes the transitions of the
    # events a database already holds with the stream's rules; a database without events has none.
    wanted = {ITEM_VIEWS_SINCE, REDACTED_SINCE, ROLLUPS_SINCE, ITEM_HISTORY_SINCE, SORTING_KEYS_SINCE,
              ATTRIBUTED_CLOSINGS_SINCE, PURGE_STAGING_SINCE} - {LIFECYCLE_SINCE}
    stale = tables_to_rekey(store)  # alerts were re-sorted after SORTING_KEYS_SINCE was recorded
    if stale:
        wanted.discard(SORTING_KEYS_SINCE)
        logger.warning("tables keep the sorting keys of an earlier schema: %s. Answers are exact; questions "
                       "about a short stretch of every province, or a province's overdue list, read more. "
                       "`opscentre db rekey`, with the workers stopped, rebuilds them.", ", ".join(stale))
    if LIFECYCLE_SINCE not in applied and not int(
            store.query(f"SELECT count() FROM {store.table('service_events')}")[0][0]):
        wanted.add(LIFECYCLE_SINCE)
    missing = sorted(wanted - applied)
    record_migrations(store, missing)
    return SCHEMA_VERSION


# The tables whose sorting keys changed in SORTING_KEYS_SINCE (`db rekey` rebuilds those of an older
# database): a time bucket first, open_items by kind, closed, province and agency, and (since schema
# 10) alerts by kind and province before the item: a province's longest-overdue list reads its own.
REKEYED = ("service_events", "security_events", "lifecycle_edges", "open_items", "alerts",
           *(table.name for table in (SERVICE_MINUTE, SECURITY_MINUTE, LIFECYCLE_MINUTE)),
           *(grain_table(table, grain) for table in (SERVICE_MINUTE, SECURITY_MINUTE, LIFECYCLE_MINUTE)
             for grain in GRAINS[1:3]))


def _created_tables(store: Store) -> dict:
    """{table name: the CREATE TABLE statement this version runs}."""
    version = store.server_version()
    return {_TABLE_NAME.search(sql).group(1): sql
            for sql in statements(store.database, version) + rollup_statements(store.database, version)
            if _TABLE_NAME.search(sql)}


def _sorting_key(sql: str) -> str:
    """The sorting key of a CREATE TABLE statement, spaces removed."""
    start = sql.find("ORDER BY ")
    if start < 0:
        return ""
    depth, key = 0, []
    for char in sql[start + len("ORDER BY "):]:
        depth += {"(": 1, ")": -1}.get(char, 0)
        key.append(char)
        if depth == 0 and (char == ")" or char in " \n" and len(key) > 1):
            break
    return "".join("".join(key).split())


def tables_to_rekey(store: Store) -> list[str]:
    """The tables of REKEYED whose sorting key is not the one this version creates: those of a
    database created before schema 9 (alerts: before 10). Their answers are exact; a question about
    a short stretch of every province, or a province's overdue pseudonyms, reads more of them."""
    wanted = {name: _sorting_key(sql) for name, sql in _created_tables(store).items()}
    node = store.nodes()[0]
    stale = []
    for name in REKEYED:
        (created,) = node.query(f"SHOW CREATE TABLE {node.local(name)}")[0]
        if _sorting_key(created) != wanted[name]:
            stale.append(name)
    return stale


def rekey(store: Store, progress=print) -> list[str]:
    """Rebuild the tables tables_to_rekey() names with this version's sorting keys: each is copied
    into a new table, which then takes its name. Run it with every worker stopped (rows written
    during the copy would be lost); the views keep writing to the table by name. One server only:
    a cluster's tables are rebuilt with ClickHouse's own tools."""
    if store.cluster:
        raise ValueError("db rekey works on one server; on a cluster, rebuild the tables with clickhouse-copier")
    created = _created_tables(store)
    done = []
    for name in tables_to_rekey(store):
        started = time.monotonic()
        staged, previous = f"{name}_rekeyed", f"{name}_before_rekey"
        store.execute(f"DROP TABLE IF EXISTS {store.table(staged)}")
        store.execute(created[name].replace(f".{name} (", f".{staged} (", 1))
        columns = [c for (c,) in store.query(
            f"SELECT name FROM system.columns WHERE database = '{store.database}' AND table = '{staged}' "
            "AND default_kind NOT IN ('ALIAS', 'MATERIALIZED')")]
        listed = ", ".join(columns)
        store.execute(f"INSERT INTO {store.table(staged)} ({listed}) SELECT {listed} FROM {store.table(name)}")
        store.execute(f"RENAME TABLE {store.table(name)} TO {store.table(previous)}, "
                      f"{store.table(staged)} TO {store.table(name)}")
        store.execute(f"DROP TABLE {store.table(previous)}")
        (rows,) = store.query(f"SELECT count() FROM {store.table(name)}")[0]
        progress(f"{name}: {int(rows):,} rows under the new sorting key in {time.monotonic() - started:.1f} s")
        done.append(name)
    record_migrations(store, sorted({SORTING_KEYS_SINCE} - applied_migrations(store)))
    return done


def _create_on_cluster(store: Store, created: list[str]) -> None:
    """Every node gets the local tables (Replicated engines when a shard has replicas: ZooKeeper or
    Keeper and the {shard} and {replica} macros), then the Distributed tables, sharded by source
    partition, under the names the code reads and writes, then the views over them. Node by node,
    not ON CLUSTER: two servers with a remote_servers section need no coordination service."""
    nodes = store.nodes()
    replicated = store.replicated()
    tables = [(sql, _TABLE_NAME.search(sql).group(1)) for sql in created if _TABLE_NAME.search(sql)]
    views = [sql for sql in created if sql.startswith("CREATE VIEW")]
    for node in nodes:
        node.execute(f"CREATE DATABASE IF NOT EXISTS {node.database}")
        for sql, name in tables:
            node.execute(_local_table(sql, name, node.database, replicated))
    for node in nodes:
        for sql, name in tables:
            key = "source_partition" if "source_partition UInt16" in sql else "0"
            node.execute(f"CREATE TABLE IF NOT EXISTS {node.table(name)} AS {node.local(name)} "
                         f"ENGINE = Distributed({store.cluster}, {node.database}, {name}_local, {key})")
        for sql in views:
            node.execute(sql)


def _local_table(sql: str, name: str, database: str, replicated: bool) -> str:
    sql = sql.replace(f".{name} (", f".{name}_local (", 1)
    if not replicated:
        return sql

    def engine(match: re.Match) -> str:
        arguments = f"'/clickhouse/tables/{{shard}}/{database}/{name}', '{{replica}}'"
        if match.group(2):
            arguments += f", {match.group(2)}"
        return f"ENGINE = Replicated{match.group(1)}({arguments})"

    return _ENGINE.sub(engine, sql, count=1)


def applied_migrations(store: Store) -> set:
    return {int(v) for (v,) in store.query(f"SELECT version FROM {store.table('schema_migrations')}")}


def record_migrations(store: Store, versions) -> None:
    if versions:
        store.insert("schema_migrations", ["version"], [list(versions)])

