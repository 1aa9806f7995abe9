"""Hostile input through the real broker, `opscentre worker` and ClickHouse.

Two thousand hostile records of twenty-odd kinds (deep nesting, timestamps out of range, huge
numbers, invalid UTF-8, lone surrogates, oversized records and batches, scalars and null, empty
arrays, misplaced personal identifiers, record times in the future, bad items inside good
batches), on both topics, as single records and in batches, mixed with a valid stream. The worker
must stay up, count the valid events exactly (every CONTRACT §2 KPI), dead-letter every bad record
or item with its reason, and leave no citizen id in clear in any ClickHouse table or its log.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from kafka import KafkaProducer

from opscentre.kafka import ensure_topics
from opscentre.measures import SERVICE_COUNTERS
from tests.test_pipeline import assert_kpis_match, stored_events
from tests.workload import Workload, read_dead_letters

pytestmark = pytest.mark.integration

CITIZEN_IDS = [f"0{n:02d}20401{n:04d}" for n in range(1, 21)]  # 12-digit citizen id numbers
SENT_AS_NUMBERS = [citizen.lstrip("0") for citizen in CITIZEN_IDS]  # JSON numbers have no leading zero


def hostile_records(rng: random.Random, template: dict, alert: dict, now_ms: int, count: int) -> list:
    """(topic kind, value, timestamp_ms or None, [a fragment of each dead letter's reason])."""
    citizen = lambda: rng.choice(CITIZEN_IDS)  # noqa: E731

    def event(base, n, **changes):
        item = dict(base, event_id=f"hostile-{n}")
        item.update(changes)
        return item

    def raw_field(base, n, field, raw: bytes) -> bytes:
        body = json.dumps({k: v for k, v in event(base, n).items() if k != field}).encode()
        return body[:-1] + b', "' + field.encode() + b'": ' + raw + b"}"

    kinds = [
        lambda n: ("service", b"[" * 5000 + b"]" * 5000, None, ["nested deeper than 64 levels"]),
        lambda n: ("service", raw_field(template, n, "extra", b'{"a":' * 200 + b"1" + b"}" * 200), None,
                   ["record is nested deeper than 64 levels"]),
        lambda n: ("service", raw_field(template, n, "occurred_at", b"10000000000000000000000000"), None,
                   ["field 'occurred_at': 1e+25 ms is outside 1970–2105"]),
        lambda n: ("service", json.dumps(event(template, n, occurred_at="1969-07-20T20:17:00Z",
                                               applicant_id=citizen())).encode(), None, ["is outside 1970–2105"]),
        lambda n: ("service", json.dumps(event(template, n, due_at="9999-12-31T23:59:59+07:00")).encode(), None,
                   ["field 'due_at': 9999-12-31T23:59:59+07:00 is outside 1970–2105"]),
        lambda n: ("service", raw_field(template, n, "due_at", b"-86400000"), None, ["field 'due_at': -86400000 ms"]),
        lambda n: ("service", b"\xff\xfe" + citizen().encode() + b"\x00", None, ["record is not UTF-8 text"]),
        lambda n: ("service", raw_field(template, n, "dossier_id", b'"\\ud800"'), None, ["not valid JSON"]),
        lambda n: ("service", raw_field(template, n, "occurred_at", b"NaN"), None, ["record is not valid JSON"]),
        lambda n: ("service", f"CCCD {citizen()} hồ sơ {n}".encode(), None, ["record is not valid JSON"]),
        lambda n: ("service", raw_field(template, n, "applicant_id", citizen().lstrip("0").encode()), None,
                   ["field 'applicant_id': expected string or null, got a JSON number"]),
        lambda n: ("service", json.dumps(event(template, n, due_at="31/12/2026", applicant_id=citizen())).encode(),
                   None, ["field 'due_at': expected RFC 3339"]),
        lambda n: ("service", json.dumps(event(template, n, source="x" * 70_000)).encode(), None,
                   ["field 'source': expected string of length <= 64"]),
        lambda n: ("service", b'[1, "' + citizen().encode() + b'", null, [], {}]', None,
                   ["item is a JSON number", "item is a JSON string", "item is JSON null", "item is a JSON array",
                    "field 'event_type': missing"]),
        lambda n: ("service", b"[]", None, ["record is an empty JSON array"]),
        lambda n: ("service", b"null", None, ["record is JSON null"]),
        lambda n: ("service", b'"' + citizen().encode() + b'"', None, ["record is a JSON string"]),
        lambda n: ("service", b"[" + b",".join([b"{}"] * 10_001) + b"]", None,
                   ["record is a batch of 10,001 items, over the limit of 10,000"]),
        lambda n: ("service", b"[" + b" " * (1 << 20) + b"]", None, ["over the limit of 1,048,576"]),
        lambda n: ("service", json.dumps(event(template, n)).encode(), now_ms + 3_600_000,
                   ["minutes in the future (check the producer's clock)"]),
        lambda n: ("service", raw_field(template, n, "amount_vnd", b"1" + b"0" * 400)
                   if template["event_type"] == "payment.completed" else raw_field(template, n, "channel", b"1e400"),
                   None, ["field '"]),
        lambda n: ("security", json.dumps(event(alert, n, count=1 << 40)).encode(), None,
                   ["field 'count': expected integer <= 4294967295"]),
        lambda n: ("security", json.dumps([event(alert, n, severity=9), event(alert, n + 10**6, category="ufo")]).encode(),
                   None, ["field 'severity'", "field 'category'"]),
        lambda n: ("security", b"[" + b"[" * 3000 + b"]" * 3000 + b"]", None, ["item is nested deeper than 64 levels"]),
    ]
    return [kinds[n % len(kinds)](n) for n in range(count)]


def test_hostile_records_are_dead_lettered_and_the_rest_counted_exactly(pipeline):
    settings = pipeline.settings
    ensure_topics(settings)
    start_ms = (int(time.time()) - 2 * 3600) // 60 * 60 * 1000
    workload = Workload(seed=31, start_ms=start_ms, events=3000, rate=10.0)
    for n, event in enumerate(workload.valid):
        if event["event_type"] == "dossier.received":
            event["applicant_id"] = CITIZEN_IDS[n % len(CITIZEN_IDS)]
    template = next(e for e in workload.valid if e["event_type"] == "dossier.received")
    alert = next(e for e in workload.valid if e["event_type"] == "security.alert")
    rng = random.Random(7)
    hostile = hostile_records(rng, template, alert, int(time.time() * 1000), 2000)

    worker = pipeline.start_worker()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.split(","), acks="all",
                             max_request_size=4 << 20)
    topics = {"service": settings.service_topic, "security": settings.security_topic}
    chunk = len(workload.valid) // 10
    for step in range(10):  # valid batches and singles, hostile records between them, both topics
        workload.send(settings, events=workload.valid[step * chunk:(step + 1) * chunk], with_bad=False)
        for kind, value, timestamp_ms, _ in hostile[step * 200:(step + 1) * 200]:
            producer.send(topics[kind], value=value, timestamp_ms=timestamp_ms)
        producer.flush()
    producer.close()

    expected_events = workload.unique_valid()
    pipeline.wait_for(lambda: stored_events(pipeline) >= len(expected_events), what="all valid events stored",
                      timeout_s=240)
    expected_letters = sum(len(reasons) for *_, reasons in hostile)
    letters = read_dead_letters(settings, expected=expected_letters, timeout_s=120)
    assert worker.running(), worker.log()
    time.sleep(2)
    assert stored_events(pipeline) == len(expected_events)

    # Every bad record or item has its dead letter, with its reason.
    assert len(letters) == expected_letters
    by_reason: dict = {}
    for letter in letters:
        by_reason.setdefault(letter["reason"], 0)
        by_reason[letter["reason"]] += 1
    for _, _, _, reasons in hostile[:30]:
        for fragment in reasons:
            assert any(fragment in reason for reason in by_reason), (fragment, sorted(by_reason)[:40])
    assert not any(reason.startswith("internal error") for reason in by_reason)

    metrics = pipeline.metrics(worker)
    assert metrics.get("opscentre_stream_internal_errors_total", 0) == 0
    assert metrics.get("opscentre_stream_events_rejected_total") == expected_letters
    log = open(worker.log_path, encoding="utf-8", errors="replace").read()
    assert "Traceback" not in log and "crashed" not in log.lower(), log[-3000:]

    end_ms = start_ms + 300_000
    assert_kpis_match(pipeline, expected_events, [
        (start_ms - 3_600_000, end_ms + 3_600_000), (start_ms + 61_500, start_ms + 200_250)])

    # No citizen id in clear in any table, nor in the worker's log.
    store = pipeline.store()
    tables = [name for (name,) in store.query(
        f"SELECT name FROM system.tables WHERE database = '{store.database}' AND engine NOT LIKE '%View%'")]
    assert "rejected_events" in tables and "service_events" in tables
    rejected = store.query(f"SELECT count() FROM {store.table('rejected_events')} FINAL")[0][0]
    assert int(rejected) == expected_letters
    for table in tables:
        columns = [name for (name,) in store.query(
            f"SELECT name FROM system.columns WHERE database = '{store.database}' AND table = '{table}'")]
        # A separator between columns: digits of neighbouring numbers must not read as an id.
        text = "concat(" + ", '|', ".join(f"ifNull(toString({c}), '')" for c in columns) + ", '')"
        found = " OR ".join(f"position({text}, '{citizen}') > 0" for citizen in CITIZEN_IDS + SENT_AS_NUMBERS)
        (leaks,) = store.query(f"SELECT count() FROM {store.table(table)} WHERE {found}")[0]
        assert int(leaks) == 0, f"{table} holds a citizen id in clear"
    for citizen in CITIZEN_IDS + SENT_AS_NUMBERS:
        assert citizen not in log


def test_a_defect_rejects_its_record_once_and_the_rest_stays_exact(clickhouse_url, monkeypatch):
    """A record whose processing raises is rejected as an internal error; after a crash its
    redelivery is rejected the same way, stored once, and every other record counts once (the
    processor on real ClickHouse; the worker's own loop is in the test above)."""
    from opscentre.clickhouse import connect
    from sinks.clickhouse_sink import ClickHouseSink
    from sinks.schema import migrate
    from streams import overdue
    from streams.processor import INTERNAL_ERRORS
    from tests.test_processor import TOPIC, MemorySink, processor, records, run

    values = records(count=120)
    poisoned = 57
    original_settle = overdue.OverdueTracker.settle

    def settle(self, record_ms):  # a defect met by one record only
        if record_ms == 1_795_000_000_000 + poisoned:
            raise KeyError("simulated defect")
        return original_settle(self, record_ms)

    monkeypatch.setattr(overdue.OverdueTracker, "settle", settle)
    reference = MemorySink()
    run(processor(reference), values[:poisoned] + [b"null"] + values[poisoned + 1:], range(len(values)))

    store = connect(clickhouse_url)
    migrate(store)
    sink = ClickHouseSink(store)
    before = INTERNAL_ERRORS.labels(TOPIC)._value.get()
    first = processor(sink)
    run(first, values, range(0, 90))
    assert INTERNAL_ERRORS.labels(TOPIC)._value.get() == before + 1
    run(processor(sink), values, range(40, len(values)))  # a crash: redelivery from offset 40
    assert INTERNAL_ERRORS.labels(TOPIC)._value.get() == before + 2

    rejected = store.query(f"SELECT source_offset, reason FROM {store.table('rejected_events')} FINAL")
    assert rejected == [(poisoned, "internal error: KeyError: 'simulated defect'")]
    columns = ", ".join(f"sum({name})" for name in SERVICE_COUNTERS)
    got = store.query(f"SELECT {columns} FROM {store.table('service_minute')} FINAL")[0]
    expected = [sum(column) for column in zip(*reference.totals().values())]
    assert [int(v) for v in got] == expected
