"""Fixtures: real servers (Tansu or OPSCENTRE_KAFKA; clickhouse-server or OPSCENTRE_TEST_CLICKHOUSE)."""

from __future__ import annotations

import os

import pytest

from opscentre.embedded import EmbeddedBroker
from tests.harness import ZOOKEEPER_JAR, ClickHouseServer, Pipeline, ZooKeeperServer, unique_name


@pytest.fixture(scope="session")
def kafka_bootstrap():
    given = os.environ.get("OPSCENTRE_KAFKA")
    if given:
        yield given
        return
    broker = EmbeddedBroker().start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def clickhouse_server():
    given = os.environ.get("OPSCENTRE_TEST_CLICKHOUSE")
    if given:
        yield given.rstrip("/")
        return
    server = ClickHouseServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clickhouse_url(clickhouse_server):
    """A fresh database on the ClickHouse server for one test."""
    database = unique_name("t")
    if isinstance(clickhouse_server, str):
        return clickhouse_server.rsplit("/", 1)[0] + "/" + database
    return clickhouse_server.url(database)


@pytest.fixture
def pipeline(kafka_bootstrap, clickhouse_url, tmp_path):
    """Isolated topics, consumer group and database on the shared servers."""
    p = Pipeline(kafka_bootstrap, clickhouse_url, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="session")
def clickhouse_cluster():
    """Two clickhouse-server 18.16 processes on loopback forming the two-shard cluster "opscentre"
    (remote_servers only: no coordination service)."""
    servers = [ClickHouseServer(), ClickHouseServer()]
    for server in servers:
        server.cluster = {"opscentre": [s.tcp_port for s in servers]}
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def cluster_pipeline(kafka_bootstrap, clickhouse_cluster, tmp_path):
    """A pipeline whose ClickHouse is the two-shard cluster (through its first node)."""
    p = Pipeline(kafka_bootstrap, clickhouse_cluster[0].url(unique_name("c")), tmp_path)
    p.env["OPSCENTRE_CLICKHOUSE_CLUSTER"] = "opscentre"
    p.settings = p._settings()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="session")
def clickhouse_replicas():
    """ZooKeeper and two clickhouse-server 18.16 processes: one shard of the cluster "opscentre", two
    replicas (Replicated engines, internal replication)."""
    if not os.path.exists(ZOOKEEPER_JAR):
        pytest.skip("Debian's zookeeper is not installed")
    zookeeper = ZooKeeperServer().start()
    servers = [ClickHouseServer(), ClickHouseServer()]
    for n, server in enumerate(servers):
        server.replicas = [s.tcp_port for s in servers]
        server.zookeeper_port = zookeeper.port
        server.macros = {"shard": "01", "replica": f"r{n + 1}"}
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
        zookeeper.stop()


@pytest.fixture
def replicated_pipeline(kafka_bootstrap, clickhouse_replicas, tmp_path):
    p = Pipeline(kafka_bootstrap, clickhouse_replicas[0].url(unique_name("r")), tmp_path)
    p.env["OPSCENTRE_CLICKHOUSE_CLUSTER"] = "opscentre"
    p.settings = p._settings()
    try:
        yield p
    finally:
        p.stop_all()
