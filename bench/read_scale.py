"""The read side at growing history: every question the CLI asks, timed after each step of history.

History is the simulator's traffic (`--rate 10`, no pacing: a virtual month is ~7 million events),
loaded through the real `opscentre worker` into one ClickHouse 18.16 server, in steps, ending an
hour before now. Each step runs on a fresh Tansu broker (its memory holds only the step); one
simulator, in its `history` mode (every dossier and feedback received is closed in time, but the
few never processed), goes on from step to step with the items it holds in progress. After each
step every question is asked --repeat times (the median is printed), through the same functions
the CLI uses, once ClickHouse has no merge left running (at most --settle-limit seconds).

    python bench/read_scale.py [--steps 5,10,20,35,50] [--repeat 3] [--rate 10]   # millions of events
    python bench/read_scale.py --keep DIR ...   # resumable: run again with the same DIR to go on

With --keep, ClickHouse's data and the table so far are kept in DIR after each step (a hard-link
copy: parts are never changed in place), and a run with the same DIR goes on from the last step
completed, restoring that copy first (a step cut short is loaded again). Loading 50 M events takes
hours here.

Before timing, it waits for the machine to be quiet (load average under 1), as a wall screen's
server would be once a backfill is over.

Also every board panel's and variable's query (dashboards/grafana), as Grafana's ClickHouse data
source sends it: each board's total for one refresh, the slowest panel, and each query in a second
table. Prints stored service events, disk, and each question's time in ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dashboards.drilldown import item_history, overdue_items  # noqa: E402
from dashboards.kpi import kpis, lifecycle_count  # noqa: E402
from dashboards.grafana.queries import board_queries, default_variables, expand  # noqa: E402
from dashboards.scorecard import scorecard  # noqa: E402
from opscentre.clickhouse import connect  # noqa: E402
from opscentre.embedded import EmbeddedBroker  # noqa: E402
from opscentre.kafka import ensure_topics  # noqa: E402
from opscentre.local import scrape  # noqa: E402
from opscentre.settings import Settings  # noqa: E402
from producers.batching import BatchingProducer  # noqa: E402
from producers.simulator import Simulator, simulate  # noqa: E402
from sinks.clickhouse_sink import ClickHouseSink, OpenItemsPurge  # noqa: E402
from sinks.schema import migrate, rekey  # noqa: E402
from tests.board_reader import BoardReader  # noqa: E402
from tests.harness import ClickHouseServer, Pipeline  # noqa: E402

UTC = dt.timezone.utc
# Stored service events per virtual second at --rate 10, office hours included (a whole 50 M run:
# 48.63 M in 17.42 M s); corrected after each step from what was stored.
SERVICE_EVENTS_PER_VIRTUAL_S = 2.79
SEED = 100
OLD_WAY_UP_TO = 12_000_000  # the lifecycle view groups every event: asked only while history is small


def load_step(server: ClickHouseServer, database: str, simulator: Simulator, end_ms: int, rate: float) -> int:
    """The simulator's events from its clock to `end_ms` through a worker into ClickHouse; returns
    the events sent. The simulator goes on from one step to the next with the dossiers it holds in
    progress, so a step's last dossiers are completed in the next, as in one long history."""
    broker = EmbeddedBroker().start()
    pipeline = Pipeline(broker.bootstrap, server.url(database), Path(tempfile.mkdtemp()))
    try:
        ensure_topics(pipeline.settings)
        worker = pipeline.start_worker()  # reads while the simulator produces: two cores at work
        producer = BatchingProducer(pipeline.settings)
        sent = simulate(producer, rate, (end_ms - simulator.now_ms()) / 1000, simulator.seed, paced=False,
                        simulator=simulator)
        producer.close()
        # The worker reads the backlog the simulator left (a third of a step or more): wait while it
        # moves. A step stopped early would leave a gap in the history for every later step.
        accepted, moved_at = -1.0, time.monotonic()
        while sent:
            metrics = scrape(worker.metrics_port)
            now_accepted = metrics.get("opscentre_stream_events_valid_total", 0)
            if now_accepted >= sent and not metrics.get("opscentre_stream_consumer_lag", 1):
                break
            if not worker.running():
                raise RuntimeError(worker.log())
            if now_accepted > accepted:
                accepted, moved_at = now_accepted, time.monotonic()
            elif time.monotonic() - moved_at > 600:
                raise RuntimeError(f"the worker accepted {accepted:,.0f} of {sent:,} events and none for 10 minutes")
            time.sleep(2)
        time.sleep(5)  # the last snapshot
        worker.stop()
        return sent
    finally:
        pipeline.stop_all()
        broker.stop()


def questions(store, end_ms: int, history_start_ms: int, stored: int) -> dict:
    """name -> a call asking it, as the CLI or a board would at `end_ms`."""
    end = dt.datetime.fromtimestamp(end_ms / 1000, UTC)
    hour_ago, day_start = end - dt.timedelta(hours=1), end.replace(hour=0, minute=0, second=0, microsecond=0)
    month_ago, week_ago = end - dt.timedelta(days=30), end - dt.timedelta(days=7)
    year_ago = end - dt.timedelta(days=365)
    settings_like = type("Targets", (), {name: 0.9 for name in (
        "target_processing_on_time", "target_on_time", "target_full_online", "target_online_payment",
        "target_feedback_on_time", "target_satisfied")})()
    item = store.query(f"SELECT item_id FROM {store.table('item_events')} WHERE event_type = 'dossier.completed' LIMIT 1")
    asked = {
        "kpi all, last hour": lambda: kpis(store, "all", hour_ago, end),
        "kpi 01, last hour": lambda: kpis(store, "01", hour_ago, end),
        "kpi 01, today": lambda: kpis(store, "01", day_start, end),
        "kpi all, 30 days": lambda: kpis(store, "all", month_ago, end),
        "kpi all, a year": lambda: kpis(store, "all", year_ago, end),
        "scorecard 01, 30 days": lambda: scorecard(store, settings_like, "01", month_ago, end),
        "scorecard 01, 7 days": lambda: scorecard(store, settings_like, "01", week_ago, end),
        "overdue open now, by agency": lambda: lifecycle_count(store, end_ms, "dossiers_overdue", None, True),
        "carried over 30 days ago": lambda: lifecycle_count(store, int(month_ago.timestamp() * 1000),
                                                            "dossiers_open", None, True),
        "overdue list, 01 UBND-XA": lambda: overdue_items(store, end_ms, "01", "UBND-XA"),
        "one dossier's history": lambda: item_history(store, item[0][0] if item else "none"),
    }
    # Overdue-open sums whole months, then this month's days, today's hours and this hour's minutes:
    # its cost peaks in a month's last minute. Asked there too once the month before is all loaded.
    month_start = end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month_before = (month_start - dt.timedelta(days=1)).replace(day=1)
    if month_before.timestamp() * 1000 >= history_start_ms:
        last_minute = month_start - dt.timedelta(seconds=30)
        asked["kpi all, last hour, in a month's last minute"] = lambda: kpis(
            store, "all", last_minute - dt.timedelta(hours=1), last_minute)
        asked["scorecard 01, 30 days, in a month's last minute"] = lambda: scorecard(
            store, settings_like, "01", last_minute - dt.timedelta(days=30), last_minute)
    if stored <= OLD_WAY_UP_TO:
        asked["(before) overdue open, lifecycle view"] = lambda: store.query(
            f"SELECT province, agency, count() FROM {store.table('dossier_lifecycle')} WHERE received AND due_ms < "
            f"{end_ms} AND NOT (completed AND completed_ms < {end_ms}) AND NOT (cancelled AND cancelled_ms < {end_ms}) "
            "GROUP BY province, agency")
    return asked


def panel_questions(url: str, end_ms: int) -> dict:
    """"board/panel" -> a call running that panel's (or variable's) query as Grafana's ClickHouse data
    source would (tests.board_reader: read-only, the plugin's settings), for the board's default
    range and variables: the last 24 hours (panels with a range of their own use it), province 01."""
    reader = BoardReader(url)
    settings = Settings(dashboard_province="01")
    end = dt.datetime.fromtimestamp(end_ms / 1000, UTC)
    start = end - dt.timedelta(hours=24)
    asked = {}
    for query in board_queries(settings):
        sql = expand(query, start, end, default_variables(settings, query.board), now=end)
        asked[f"{query.board.removeprefix('opscentre-')}: {query.title}"] = lambda sql=sql: reader.run(sql)
    return asked


# A step's purge is a backlog of weeks of virtual time, so its rounds take more items than a
# worker's (PURGE_ITEMS_PER_ROUND): measured at 52 M events on 18.16, rounds of 0.33-0.50 M staged
# rows took the server to 1.23 GB at most, against 24 GB (killed) for 13.6 M rows in one round.
BACKLOG_ITEMS_PER_ROUND = 1_000_000


def purge_closed_items(store) -> int:
    """What a worker's hourly purge leaves of `open_items` once the step's closings are older than
    its horizon: the items still open. The step's workers live less than an hour, so theirs never
    ran, and a history loaded at its own pace keeps only the last hour's closings. Rounds follow
    each other, as a worker's do after a backlog, until one has staged every item left. Returns the rows left."""
    sink = ClickHouseSink(store)
    purges = [OpenItemsPurge(topic_id, int(partition), 2**62, int(time.time() * 1000)) for topic_id, partition
              in store.query(f"SELECT DISTINCT topic_id, source_partition FROM {store.table('open_items')}")]
    purged = None
    while purged is None or not purged.complete:
        while sink.purge_running():  # a purge still running (a worker's, or the round before) is waited for
            time.sleep(2)
        purged = sink.purge_open_items(purges, items_per_round=BACKLOG_ITEMS_PER_ROUND)
    while sink.purge_running():
        time.sleep(2)
    return int(store.query(f"SELECT count() FROM {store.table('open_items')}")[0][0])


def settle(store, limit_s: float) -> tuple[float, int]:
    """Wait until ClickHouse has no merge running in the database (at most `limit_s`), as a wall
    screen sees it once a backfill is over; returns (seconds waited, active parts)."""
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < limit_s and quiet < 2:
        (running,) = store.query(f"SELECT count() FROM system.merges WHERE database = '{store.database}'")[0]
        quiet = quiet + 1 if not int(running) else 0
        time.sleep(2)
    (parts,) = store.query(f"SELECT count() FROM system.parts WHERE database = '{store.database}' AND active")[0]
    return time.monotonic() - started, int(parts)


def wait_for_quiet_machine(limit_s: float = 1800) -> float:
    """Wait until the 1-minute load average is under 1 (nothing else running), at most `limit_s`."""
    started = time.monotonic()
    while os.getloadavg()[0] >= 1.0 and time.monotonic() - started < limit_s:
        time.sleep(10)
    return time.monotonic() - started


class Kept:
    """--keep DIR: the server's data after the last step completed (DIR/done), the live data
    (DIR/live) and the progress (DIR/progress.json)."""

    def __init__(self, directory: str):
        self.dir = Path(directory)
        self.progress_file = self.dir / "progress.json"

    def progress(self) -> dict | None:
        return json.loads(self.progress_file.read_text()) if self.progress_file.exists() else None

    def simulator(self, steps_done: int) -> Simulator | None:
        """The simulator as the last step completed left it (None: a run from before it was kept)."""
        kept = self.dir / f"simulator-after-step-{steps_done}.pickle"
        return pickle.loads(kept.read_bytes()) if kept.exists() else None

    def server(self) -> ClickHouseServer:
        server = ClickHouseServer()
        os.rmdir(server.dir)
        live = self.dir / "live"
        if live.exists():
            shutil.rmtree(live)
        if (self.dir / "done").exists():  # a step cut short leaves nothing behind
            shutil.copytree(self.dir / "done", live, copy_function=os.link)
        live.mkdir(parents=True, exist_ok=True)
        server.dir = str(live)
        return server.start()

    def step_done(self, server: ClickHouseServer, progress: dict, simulator: Simulator | None) -> ClickHouseServer:
        server.stop(keep_data=True)
        steps_done = progress["steps_done"]
        if simulator is not None:
            (self.dir / f"simulator-after-step-{steps_done}.pickle").write_bytes(pickle.dumps(simulator))
        done, previous = self.dir / "done", self.dir / "done.previous"
        shutil.copytree(self.dir / "live", previous if done.exists() else done, copy_function=os.link)
        if previous.exists():
            shutil.rmtree(done)
            previous.rename(done)
        self.progress_file.with_suffix(".tmp").write_text(json.dumps(progress))
        self.progress_file.with_suffix(".tmp").rename(self.progress_file)
        for older in self.dir.glob("simulator-after-step-*.pickle"):
            if older.name != f"simulator-after-step-{steps_done}.pickle":
                older.unlink()
        return server.start()


def idle_share(sample_s: float = 1.0) -> float:
    """The share of every core left idle over `sample_s` (/proc/stat)."""
    def idle_and_total():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)
    idle_before, total_before = idle_and_total()
    time.sleep(sample_s)
    idle_after, total_after = idle_and_total()
    return (idle_after - idle_before) / max(1, total_after - total_before)


def wait_for_idle_cores(limit_s: float = 600) -> None:
    """Before each question: wait until nothing else uses the cores (90 % idle over a second), at
    most `limit_s`; a load average cannot tell, since the questions raise it themselves."""
    started = time.monotonic()
    while idle_share() < 0.9 and time.monotonic() - started < limit_s:
        pass


def timed(call, repeat: int) -> float:
    wait_for_idle_cores()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_questions(store, url: str, clock_ms: int, history_start_ms: int, stored: int,
                   repeat: int) -> tuple[dict, dict, str]:
    """(question -> ms, board panel -> ms, the slowest panel), each the median of `repeat`; the
    questions' times also hold each board's total for one refresh and the slowest panel's."""
    times = {name: timed(call, repeat) * 1000 for name, call in questions(store, clock_ms, history_start_ms, stored).items()}
    panel_times = {name: timed(call, repeat) * 1000 for name, call in panel_questions(url, clock_ms).items()}
    for board in dict.fromkeys(name.split(":")[0] for name in panel_times):
        board_times = [t for name, t in panel_times.items() if name.split(":")[0] == board]
        times[f"board {board}: every panel, one refresh"] = sum(board_times)
    slowest = max(panel_times, key=panel_times.get)
    times["slowest panel"] = panel_times[slowest]
    return times, panel_times, slowest


def with_new_questions(names: list | None, times: dict) -> list[str]:
    """The table's question rows so far and, after them, those first asked in `times` (a month's
    last minute is asked once the history holds a whole month); board totals are rows of their own."""
    names = list(names or [])
    return names + [name for name in times if name not in names and not name.startswith("board ")
                    and name != "slowest panel"]


def retime_last_step(store, url: str, progress: dict, repeat: int) -> None:
    """--retime: bring the kept data to this version's schema, as an upgrade would (migrate, then
    db rekey for tables sorted by an older key), and time the last step's questions again."""
    migrate(store)
    rekey(store, progress=lambda message: print(message, flush=True))
    settle(store, 900)
    wait_for_quiet_machine()
    loaded, _, loading_s, *_ = progress["rows"][-1]
    times, panel_times, slowest = time_questions(store, url, progress["clock_ms"], progress["history_start_ms"],
                                                 loaded, repeat)
    disk = disk_mib(store)
    progress["rows"][-1] = (loaded, disk, loading_s, times, panel_times)
    progress["names"] = with_new_questions(progress["names"], times)
    print(f"step {progress['steps_done']} timed again: {loaded:,} service events, {disk:,.0f} MiB; "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in times.items()) + f" (slowest: {slowest})", flush=True)


def disk_mib(store) -> float:
    (size,) = store.query(f"SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{store.database}' AND active")[0]
    return int(size or 0) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="5,10,20,35,50", help="stored service events after each step, millions")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--settle-limit", type=float, default=900,
                        help="after each step, wait this long at most for ClickHouse's merges to end before timing")
    parser.add_argument("--keep", metavar="DIR", help="keep the data and the progress in DIR; run again to go on")
    parser.add_argument("--retime", action="store_true",
                        help="with --keep: time the last step kept again, without loading (after migrate and db rekey)")
    args = parser.parse_args()
    if args.retime and not args.keep:
        parser.error("--retime needs --keep DIR")
    targets = [int(float(x) * 1_000_000) for x in args.steps.split(",")]
    kept = Kept(args.keep) if args.keep else None
    progress = kept.progress() if kept else None
    server = kept.server() if kept else ClickHouseServer().start()
    database = "readscale"
    rows, names, panel_names = [], None, None
    try:
        if progress:
            if progress["targets"] != targets:
                raise SystemExit(f"{args.keep} holds a run with --steps {progress['targets']}; give the same steps")
            per_virtual_s, end_ms, clock_ms = progress["per_virtual_s"], progress["end_ms"], progress["clock_ms"]
            history_start_ms, loaded, first_step = progress["history_start_ms"], progress["loaded"], progress["steps_done"]
            rows, names, panel_names = [tuple(row) for row in progress["rows"]], progress["names"], progress["panel_names"]
            simulator = kept.simulator(first_step)
            if not args.retime:
                if simulator is None:
                    raise SystemExit(f"{args.keep} holds a run from before the simulator was kept between steps; "
                                     "time it with --retime, or start a new one in another DIR")
                print(f"going on from step {first_step + 1} ({loaded:,} service events stored)", flush=True)
        else:
            per_virtual_s = SERVICE_EVENTS_PER_VIRTUAL_S * args.rate / 10
            total_virtual_s = targets[-1] / per_virtual_s
            end_ms = int((time.time() - 3600) * 1000)
            clock_ms = end_ms - int(total_virtual_s * 1000)
            history_start_ms, loaded, first_step = clock_ms, 0, 0
            simulator = Simulator(SEED, args.rate, clock_ms, history=True)
        store = connect(server.url(database))
        if args.retime:
            if not progress:
                raise SystemExit(f"{args.keep} holds no completed step to time again")
            retime_last_step(store, server.url(database), progress, args.repeat)
            rows, names = [tuple(row) for row in progress["rows"]], progress["names"]
            server = kept.step_done(server, progress, simulator)
            first_step = len(targets)
        for step, target in enumerate(targets):
            if step < first_step:
                continue
            remaining_steps_s = (end_ms - clock_ms) / 1000
            step_s = min(remaining_steps_s, (target - loaded) / per_virtual_s) if step < len(targets) - 1 \
                else remaining_steps_s
            if step_s < 60:
                print(f"step {step + 1}: no virtual time left (the first steps held more events than estimated)")
                break
            started = time.monotonic()
            load_step(server, database, simulator, clock_ms + int(step_s * 1000), args.rate)
            loading_s = time.monotonic() - started
            clock_ms += int(step_s * 1000)
            open_rows = purge_closed_items(store)
            settled_s, parts = settle(store, args.settle_limit)
            quiet_s = wait_for_quiet_machine()
            (service,) = store.query(f"SELECT count() FROM {store.table('service_events')}")[0]
            loaded = int(service)
            per_virtual_s = max(0.1, loaded / ((clock_ms - history_start_ms) / 1000))
            times, panel_times, slowest = time_questions(store, server.url(database), clock_ms, history_start_ms,
                                                         loaded, args.repeat)
            names = with_new_questions(names, times)
            panel_names = panel_names or list(panel_times)
            disk = disk_mib(store)
            rows.append((loaded, disk, loading_s, times, panel_times))
            print(f"step {step + 1}: {loaded:,} service events, {disk:,.0f} MiB, loaded in "
                  f"{loading_s:,.0f} s, merges settled {settled_s:,.0f} s later ({parts:,} active parts), "
                  f"quiet after {quiet_s:,.0f} s more, {open_rows:,} open_items rows; "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in times.items())
                  + f" (slowest: {slowest})", flush=True)
            if kept:
                server = kept.step_done(server, {
                    "targets": targets, "per_virtual_s": per_virtual_s, "end_ms": end_ms, "clock_ms": clock_ms,
                    "history_start_ms": history_start_ms, "loaded": loaded, "steps_done": step + 1, "rows": rows,
                    "names": names, "panel_names": panel_names}, simulator)
                store = connect(server.url(database))
    finally:
        server.stop(keep_data=bool(kept))
    header = "| question | " + " | ".join(f"{events / 1e6:.1f} M" for events, *_ in rows) + " |"
    print("\n" + header)
    print("|---|" + "---|" * len(rows))
    print("| disk, MiB | " + " | ".join(f"{mib:,.0f}" for _, mib, *_ in rows) + " |")
    for name in names + [name for name in rows[-1][3] if name not in names] if rows else []:
        cells = [f"{times[name]:,.0f}" if name in times else "–" for _, _, _, times, _ in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nEach board query, ms (Grafana's SQL after its substitutions, the last 24 hours, province 01):\n")
    print(header.replace("question", "board: panel"))
    print("|---|" + "---|" * len(rows))
    for name in panel_names or []:
        cells = [f"{panel_times[name]:,.0f}" if name in panel_times else "–" for *_, panel_times in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
