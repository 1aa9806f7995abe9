"""dashboards/grafana/sql.py against dashboards/kpi.py, on ClickHouse 18.16 and chDB (run by
tests/test_board_queries.py, on the database its board queries then read).

The boards write the read side's split of a period (whole months, days, hours and minutes, raw
partial minutes) in SQL from Grafana's `$__fromTime`/`$__toTime`. Over months of stored events,
for many periods (aligned to minutes, hours, days and months or not, seconds precision as the
plugin gives them, shorter than a minute, across month ends) and instants, the SQL, expanded as
the plugin's backend expands it, must give exactly what kpi.counters and kpi.lifecycle_count give.
"""

from __future__ import annotations

import datetime as dt
import json
import random

from dashboards.grafana import sql
from dashboards.kpi import Period, counters, lifecycle_count
from dashboards.macros import alert_sql
from opscentre.clickhouse import connect
from opscentre.measures import SERVICE_COUNTERS
from tests.board_reader import BoardReader

UTC = dt.UTC
PROVINCES = ["01", "48", "79"]
T0 = 1_790_812_800_000  # 2026-10-01T00:00:00Z: the sparse history runs across two month ends


def fill(store) -> tuple[int, int]:
    """Two months of sparse history and twenty minutes of dense traffic, in shuffled order (late
    events); returns the event-time span (ms)."""
    from opscentre.events import routing_key
    from opscentre.kafka import partition_for
    from opscentre.settings import Settings
    from producers.simulator import Simulator
    from sinks.clickhouse_sink import ClickHouseSink
    from sinks.schema import migrate
    from streams.processor import Processor

    migrate(store)
    settings = Settings(topic_prefix="b")
    processor = Processor(settings, {settings.service_topic: "ts", settings.security_topic: "tz"},
                          ClickHouseSink(store), b"k", PROVINCES, clock=lambda: T0 / 1000 + 90 * 86400)
    sparse = Simulator(1, 0.0004, T0 - 10 * 86_400_000, provinces=PROVINCES, steady=True)
    dense = Simulator(2, 3.0, T0 + 20 * 86_400_000 + 3_600_000 - 600_000, provinces=PROVINCES, steady=True)
    events = [sparse.next_event() for _ in range(2500)] + [dense.next_event() for _ in range(3600)]
    rng = random.Random(4)
    for start in range(0, len(events), 300):  # a little out of order everywhere
        chunk = events[start:start + 300]
        rng.shuffle(chunk)
        events[start:start + 300] = chunk
    by_partition: dict = {}  # one item's events in one partition, as producers key them
    for event in events:
        topic = settings.security_topic if event["event_type"] == "security.alert" else settings.service_topic
        by_partition.setdefault((topic, partition_for(routing_key(event), 3)), []).append(event)
    records = [(topic, partition, offset, part[start:start + 10])
               for (topic, partition), part in by_partition.items()
               for offset, start in enumerate(range(0, len(part), 10))]
    records.sort(key=lambda record: (record[2], record[0], record[1]))  # partitions interleaved
    for number, (topic, partition, offset, part) in enumerate(records):
        processor.process(topic, partition, offset, T0 + 90 * 86_400_000, json.dumps(part).encode())
        if number % 50 == 49:
            processor.flush()
    processor.flush()
    times = [int(dt.datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000) if isinstance(e["occurred_at"], str)
             else e["occurred_at"] for e in events]
    return min(times), max(times)


def periods(span: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """Whole-second periods: aligned and not, from one second to two months."""
    rng = random.Random(7)
    low, high = span[0] // 1000 - 86400, span[1] // 1000 + 3600
    lengths = [1, 30, 59, 60, 61, 119, 3599, 3600, 3601, 86399, 86400, 86401, 7 * 86400 + 13, 31 * 86400, 62 * 86400]
    chosen = [(1_790_812_800 - 5, 1_790_812_800 + 5), (1_790_812_740, 1_793_491_200)]  # a month end; Oct 1 to Nov 1
    for n in range(count):
        start = rng.randrange(low, high)
        align = n % 5
        if align == 1:
            start -= start % 60
        elif align == 2:
            start -= start % 3600
        elif align == 3:
            start -= start % 86400
        elif align == 4:
            month = dt.datetime.fromtimestamp(start, UTC).replace(day=1, hour=0, minute=0, second=0)
            start = int(month.timestamp())
        length = rng.choice(lengths) if n % 3 else rng.randrange(1, 70 * 86400)
        chosen.append((start, start + length))
    return chosen


def _moment(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


def run(reader, template: str, start_s: int, end_s: int) -> list[tuple]:
    return reader.rows(alert_sql(template, time_from=_moment(start_s), time_to=_moment(end_s)))


def nonzero(rows: dict) -> dict:
    return {key: values for key, values in rows.items() if any(values.values())}


def periods_are_kpis_split(store, reader, span) -> int:
    service = sql.period_sum(sql.SERVICE, SERVICE_COUNTERS, group_by=["province"])
    by_agency = sql.period_sum(sql.SERVICE, ["dossiers_received", "dossiers_completed_on_time", "payments_vnd"],
                               group_by=["province", "agency"])
    security = sql.period_sum(sql.SECURITY, list(sql.SECURITY.measures), group_by=["province"])
    checked = 0
    for start_s, end_s in periods(span, 40):
        period = Period(_moment(start_s), _moment(end_s))
        expected = counters(store, period, None)
        got = {row[0]: dict(zip(SERVICE_COUNTERS, row[1:])) for row in run(reader, service, start_s, end_s)}
        for row in run(reader, security, start_s, end_s):
            got.setdefault(row[0], {}).update(zip(sql.SECURITY.measures, row[1:]))
        assert nonzero(got) == nonzero(expected), (start_s, end_s)
        agencies = counters(store, period, None, by_agency=True)
        wanted = {key: {name: values[name] for name in ("dossiers_received", "dossiers_completed_on_time",
                                                        "payments_vnd")} for key, values in agencies.items()}
        got = {tuple(row[:2]): dict(zip(("dossiers_received", "dossiers_completed_on_time", "payments_vnd"), row[2:]))
               for row in run(reader, by_agency, start_s, end_s)}
        assert nonzero(got) == nonzero(wanted), (start_s, end_s)
        checked += sum(values.get("events", 0) for values in expected.values())
    return checked


def instants_are_lifecycle_counts(store, reader, span) -> int:
    intervals = ["dossiers_open", "dossiers_overdue", "feedback_open", "feedback_overdue"]
    template = sql.instant_sum([sql.lifecycle_measure(i) for i in intervals], group_by=["province", "agency"])
    rng = random.Random(8)
    instants = [span[0] // 1000 + rng.randrange(0, (span[1] - span[0]) // 1000 + 86400) for _ in range(20)]
    instants += [t - t % 60 for t in instants[:10]] + [1_790_812_800, 1_790_812_799, 1_790_812_801]
    checked = 0
    for t in instants:
        got = {tuple(row[:2]): dict(zip(intervals, row[2:])) for row in run(reader, template, t - 3600, t)}
        expected: dict = {}
        for interval in intervals:
            for key, count in lifecycle_count(store, t * 1000, interval, None, by_agency=True).items():
                expected.setdefault(key, dict.fromkeys(intervals, 0))[interval] = count
        assert nonzero(got) == nonzero(expected), t
        checked += sum(sum(v.values()) for v in expected.values())
    return checked


def check(url: str) -> tuple:
    """Fill a database, then compare; returns the events' span (tests/test_board_queries.py goes on
    with the same database: one fill per server)."""
    store = connect(url)
    span = fill(store)
    reader = BoardReader(url)
    assert periods_are_kpis_split(store, reader, span) > 20_000  # the periods are not all empty
    assert instants_are_lifecycle_counts(store, reader, span) > 1_000
    return span


def test_bounds_are_the_grains_boundaries():
    """floor_to/ceil_to in SQL text are checked on the servers above; here, their shape."""
    assert sql.floor_to("hour", "x") == "intDiv(x, 3600) * 3600"
    assert sql.ceil_to("minute", "x") == "intDiv(x + 59, 60) * 60"
    assert "toStartOfMonth(toDateTime(x, 'UTC'))" in sql.ceil_to("month", "x")


