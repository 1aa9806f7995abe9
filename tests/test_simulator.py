"""The simulator's shapes: office hours, working-day time limits, agencies' on-time rates, backlogs."""

from __future__ import annotations

import collections
import datetime as dt
import pickle
import random

from producers.office_hours import HOUR_MS, MINUTE_MS, WORKING_DAY_MS, OfficeHours
from producers.simulator import AGENCIES, Simulator, Weighted, rfc3339, simulate
from tests.workload import _ms

VN = dt.timezone(dt.timedelta(hours=7))
MONDAY_9 = int(dt.datetime(2026, 11, 16, 9, 0, tzinfo=VN).timestamp() * 1000)
COUNTER_ONLY = {"dossier.completed", "dossier.cancelled", "feedback.resolved", "document.exchanged"}


def events(seed=7, rate=100.0, start_ms=MONDAY_9, count=2000, steady=False):
    simulator = Simulator(seed, rate, start_ms, steady=steady)
    return [simulator.next_event() for _ in range(count)], simulator


class Collected:
    def __init__(self):
        self.events = []

    def send(self, event):
        self.events.append(event)

    def poll(self):
        pass

    def flush(self):
        pass


def test_a_history_sent_in_runs_is_the_history_sent_at_once():
    """bench/read_scale sends a long history in steps, keeping the simulator (pickled) between
    them: the dossiers one step leaves in progress are completed in the next, as at once."""
    at_once = Collected()
    simulate(at_once, 10.0, 3 * 1200, 7, MONDAY_9, paced=False)
    in_runs, simulator = Collected(), Simulator(7, 10.0, MONDAY_9)
    for _ in range(3):
        simulate(in_runs, 10.0, 1200, 7, paced=False, simulator=simulator)
        simulator = pickle.loads(pickle.dumps(simulator))
    assert in_runs.events == at_once.events
    received = {e["dossier_id"] for e in at_once.events if e["event_type"] == "dossier.received"}
    assert any(e["event_type"] == "dossier.completed" and e["dossier_id"] in received for e in at_once.events)


def test_a_history_closes_what_it_receives():
    """With `history` every dossier received is completed or cancelled (but the few never
    processed) and every feedback resolved, however long its procedure: months of simulated
    history hold the items in progress open, not every long procedure ever filed."""
    simulator = Simulator(7, 0.05, MONDAY_9, history=True)
    first_day = MONDAY_9 + 86_400_000
    opened = {"dossier": set(), "feedback": set()}
    closed = {"dossier": set(), "feedback": set()}
    while simulator.now_ms() < MONDAY_9 + 75 * 86_400_000:
        event = simulator.next_event()
        kind, item = ("dossier", event.get("dossier_id")) if "dossier_id" in event else ("feedback", event.get("feedback_id"))
        if event["event_type"] in ("dossier.received", "feedback.received"):
            if _ms(event["occurred_at"]) < first_day:
                opened[kind].add(item)
        elif event["event_type"] in ("dossier.completed", "dossier.cancelled", "feedback.resolved"):
            closed[kind].add(item)
    assert len(opened["dossier"]) > 500 and len(opened["feedback"]) > 50
    assert len(opened["dossier"] - closed["dossier"]) <= 0.05 * len(opened["dossier"])  # 3% never processed
    assert not opened["feedback"] - closed["feedback"]
    without = Simulator(7, 0.05, MONDAY_9)  # a live run keeps a working day of completions only
    events = [without.next_event() for _ in range(20_000)]
    received = {e["feedback_id"] for e in events if e["event_type"] == "feedback.received"}
    assert not received & {e["feedback_id"] for e in events if e["event_type"] == "feedback.resolved"}


def local(event) -> dt.datetime:
    return dt.datetime.fromtimestamp(_ms(event["occurred_at"]) / 1000, VN)


def test_same_seed_same_events():
    first, again, other = events(7)[0], events(7)[0], events(8)[0]
    assert first == again
    assert first != other
    assert {e["event_type"] for e in first} == {
        "dossier.received", "dossier.completed", "dossier.cancelled", "payment.completed",
        "feedback.received", "feedback.resolved", "document.exchanged", "security.alert",
    }


def test_working_time_skips_nights_lunch_and_weekends():
    hours = OfficeHours()
    friday_1650 = MONDAY_9 + 4 * 24 * HOUR_MS + 7 * HOUR_MS + 50 * MINUTE_MS
    monday_0750 = friday_1650 + 3 * 24 * HOUR_MS - 9 * HOUR_MS
    assert hours.add(friday_1650, 30 * MINUTE_MS) == monday_0750
    assert hours.add(MONDAY_9 + 2 * HOUR_MS, HOUR_MS) == MONDAY_9 + 5 * HOUR_MS  # 11:00 + 1 h = 14:00
    assert hours.between(friday_1650, monday_0750) == 30 * MINUTE_MS
    assert not hours.is_open(friday_1650 + HOUR_MS) and hours.is_open(MONDAY_9)
    assert OfficeHours(always_open=True).add(friday_1650, 30 * MINUTE_MS) == friday_1650 + 30 * MINUTE_MS


def test_working_time_of_weeks_ends_where_its_working_time_is_used_up():
    hours = OfficeHours()
    monday_0730 = MONDAY_9 - 90 * MINUTE_MS
    assert hours.add(monday_0730, 5 * WORKING_DAY_MS) == monday_0730 + 4 * 24 * HOUR_MS + 570 * MINUTE_MS  # Fri 17:00
    assert hours.add(monday_0730 - 450 * MINUTE_MS, 6 * WORKING_DAY_MS) == monday_0730 + 7 * 24 * HOUR_MS + 570 * MINUTE_MS
    rng = random.Random(3)
    for _ in range(3000):
        start = MONDAY_9 + rng.randrange(-7 * 24 * HOUR_MS, 60 * 24 * HOUR_MS)
        if rng.random() < 0.3:
            start -= (start + 7 * HOUR_MS) % (24 * HOUR_MS)  # local midnight
        working = rng.choice((rng.randrange(0, 30 * WORKING_DAY_MS), rng.randrange(1, 30) * WORKING_DAY_MS))
        end = hours.add(start, working)
        assert hours.between(start, end) == working
        assert working == 0 or hours.between(start, end - 1) < working  # the first such moment


def test_weighted_choices_and_timestamps_are_those_of_the_standard_library():
    population, weights = ["a", "b", "c", "d"], [5, 0.5, 3, 1.5]
    choice, rng, reference = Weighted(population, weights), random.Random(9), random.Random(9)
    assert [choice.pick(rng) for _ in range(2000)] == [reference.choices(population, weights)[0] for _ in range(2000)]
    for ms in [0, 999, 1_000, 59_999] + [rng.randrange(10**12, 3 * 10**12) for _ in range(2000)]:
        assert rfc3339(ms) == dt.datetime.fromtimestamp(ms / 1000, VN).isoformat(timespec="milliseconds")


def test_counters_keep_office_hours_and_nights_are_quiet():
    stream, simulator = events(rate=1.0, start_ms=MONDAY_9 - 9 * HOUR_MS, count=70_000)  # Monday 00:00 on
    assert simulator.now_ms() - simulator.start_ms > 36 * HOUR_MS
    hours = OfficeHours()
    for event in stream:
        if event["event_type"] in COUNTER_ONLY or event.get("channel") in ("in_person", "postal"):
            assert hours.is_open(_ms(event["occurred_at"])), event
    per_hour = collections.Counter((local(e).date(), local(e).hour) for e in stream)
    monday = local(stream[0]).date()
    assert per_hour[(monday, 3)] < 0.2 * per_hour[(monday, 9)]
    assert per_hour[(monday, 20)] < 0.4 * per_hour[(monday, 9)]
    night = [e for e in stream if local(e).date() == monday and local(e).hour < 6]
    assert {e["event_type"] for e in night} == {"dossier.received", "payment.completed", "feedback.received",
                                                "security.alert"}
    # Due dates count working time: nothing filed overnight is due before the office opens.
    for event in night:
        if event["event_type"] == "dossier.received":
            assert hours.is_open(_ms(event["due_at"]) - 1)


def test_agencies_keep_their_on_time_rates():
    stream, _ = events(seed=3, rate=50.0, count=150_000, steady=True)
    late = collections.defaultdict(lambda: [0, 0])
    for event in stream:
        if event["event_type"] == "dossier.completed":
            counts = late[event["agency"]]
            counts[0] += 1
            counts[1] += _ms(event["occurred_at"]) > _ms(event["due_at"])
    for agency in ("CAT", "UBND-XA", "SNNMT"):
        completed, late_count = late[agency]
        assert completed > 2000
        assert abs(late_count / completed - AGENCIES[agency].late_share) < 0.03, (agency, late_count / completed)
    assert late["SNNMT"][1] / late["SNNMT"][0] > 3 * late["CAT"][1] / late["CAT"][0]


def test_a_desk_that_falls_behind_builds_a_backlog_that_drains():
    def completions_of(simulator, stream):
        received = {e["dossier_id"]: _ms(e["occurred_at"]) for e in stream if e["event_type"] == "dossier.received"
                    and (e["province"], e["agency"]) == ("79", "UBND-XA")}
        return [(received[e["dossier_id"]], _ms(e["occurred_at"]) > _ms(e["due_at"])) for e in stream
                if e["event_type"] == "dossier.completed" and e["dossier_id"] in received]

    normal = Simulator(11, 2.0, MONDAY_9)
    slow = Simulator(11, 2.0, MONDAY_9)
    for simulator in (normal, slow):
        simulator.next_fall_behind_ms = float("inf")  # only the spell below
    slow.fall_behind("79", "UBND-XA", MONDAY_9, MONDAY_9 + 2 * HOUR_MS)
    normal_done = completions_of(normal, [normal.next_event() for _ in range(160_000)])
    slow_done = completions_of(slow, [slow.next_event() for _ in range(160_000)])
    assert slow.now_ms() > MONDAY_9 + 48 * HOUR_MS

    def late_share(done, start, end):
        window = [is_late for received_ms, is_late in done if start <= received_ms < end]
        return sum(window) / len(window)

    during = (MONDAY_9 + HOUR_MS, MONDAY_9 + 2 * HOUR_MS)
    assert late_share(normal_done, *during) < 0.15
    assert late_share(slow_done, *during) > 0.8
    days_later = (MONDAY_9 + 28 * HOUR_MS + 30 * MINUTE_MS, MONDAY_9 + 32 * HOUR_MS)  # Tuesday afternoon: drained
    assert late_share(slow_done, *days_later) < 0.15
    assert len(slow_done) < len(normal_done)  # some of the backlog finishes more than a working day later
