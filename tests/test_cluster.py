"""The schema on ClickHouse clusters of 18.16 servers: sharded over two shards (remote_servers, no
coordination service), and replicated (one shard, two replicas, ZooKeeper). The end-to-end tests
give the same exact numbers as on one server, after a SIGKILL too; each shard holds part of the
rows, each replica all of them."""

from __future__ import annotations

import pytest

from tests import test_exactly_once, test_pipeline

pytestmark = pytest.mark.integration


def shard_rows(pipeline, table: str) -> list[int]:
    nodes = pipeline.store().nodes()
    assert len(nodes) == 2
    return [int(node.query(f"SELECT count() FROM {node.local(table)}")[0][0]) for node in nodes]


def test_mixed_stream_exact_on_two_shards(cluster_pipeline):
    test_pipeline.test_mixed_stream_gives_exact_kpis_and_dead_letters(cluster_pipeline)
    for table in ("service_events", "service_minute", "service_hour", "lifecycle_edges", "open_items"):
        counts = shard_rows(cluster_pipeline, table)
        assert all(counts), (table, counts)  # both shards hold rows: the partitions are spread


def test_worker_killed_mid_stream_on_two_shards(cluster_pipeline):
    test_exactly_once.test_worker_killed_mid_stream_and_restarted(cluster_pipeline)


def test_two_replicas_hold_the_same_rows(replicated_pipeline):
    test_pipeline.test_mixed_stream_gives_exact_kpis_and_dead_letters(replicated_pipeline)
    for table in ("service_events", "service_minute", "service_day", "lifecycle_month", "alerts"):
        store = replicated_pipeline.store()
        for node in store.nodes():
            node.execute(f"SYSTEM SYNC REPLICA {node.local(table)}")
        counts = shard_rows(replicated_pipeline, table)
        assert counts[0] == counts[1], (table, counts)
    engine = replicated_pipeline.store().query(
        f"SELECT engine FROM system.tables WHERE database = '{replicated_pipeline.store().database}' "
        "AND name = 'service_events_local'")
    assert engine == [("ReplicatedReplacingMergeTree",)]
