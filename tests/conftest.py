"""Fixtures: real servers (Tansu or OPSCENTRE_KAFKA; clickhouse-server or OPSCENTRE_TEST_CLICKHOUSE)."""

from __future__ import annotations

import os

import pytest

from opscentre.embedded import EmbeddedBroker
from tests.harness import ClickHouseServer, Pipeline, unique_name


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
