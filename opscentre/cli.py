"""`opscentre`: the command line (CONTRACT §3).

Every command prints --help; a wrong argument or an unreachable server gives
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys

from .settings import Settings, SettingsError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + traceback
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 2."""


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _time(text):
    from dashboards.kpi import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opscentre", description="Streaming KPIs for a provincial operations centre.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser("run", help="the whole pipeline on this machine (embedded broker and ClickHouse)")
    run.add_argument("--rate", type=_positive(float), default=2000.0,
                     help="simulated events per second at the weekday office-hours peak (default 2000)")
    run.add_argument("--duration", type=_positive(float), help="stop after this many seconds (default: until Ctrl-C)")
    run.add_argument("--seed", type=int, help="simulator seed (default: random)")
    run.add_argument("--steady", action="store_true", help="peak traffic around the clock (no office hours)")

    sim = commands.add_parser("simulate", help="realistic service-usage and security events into Kafka")
    sim.add_argument("--rate", type=_positive(float), required=True,
                     help="events per second at the weekday office-hours peak (less at night and weekends)")
    sim.add_argument("--duration", type=_positive(float), required=True, help="seconds of traffic")
    sim.add_argument("--seed", type=int, help="same seed and --start, same events (default: random)")
    sim.add_argument("--start", type=_time, help="virtual start time, RFC 3339 (default: now)")
    sim.add_argument("--no-pacing", action="store_true", help="send as fast as possible")
    sim.add_argument("--steady", action="store_true",
                     help="peak traffic around the clock: no office hours or weekends (benchmarks)")

    ingest = commands.add_parser("ingest", help="a JSONL file of events into Kafka, routed by event_type")
    ingest.add_argument("path", help="JSONL file, or - for standard input")

    commands.add_parser("worker", help="the stream processor and ClickHouse sink")

    replay = commands.add_parser(
        "replay", help="reprocess a range of the event topics into ClickHouse (running it twice changes nothing)")
    replay.add_argument("--from-offsets", help="'earliest' or TOPIC:PARTITION:OFFSET,... (inclusive)")
    replay.add_argument("--to-offsets", help="TOPIC:PARTITION:OFFSET,... (exclusive; default: the end)")
    replay.add_argument("--from", dest="start", type=_time,
                        help="RFC 3339; resolved per partition by offsets_for_times (Tansu: by arrival time)")
    replay.add_argument("--to", dest="end", type=_time, help="RFC 3339, exclusive")
    replay.add_argument("--into", metavar="DATABASE", help="write into this database instead (what-if runs)")

    db = commands.add_parser("db", help="ClickHouse schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    db_commands.required = True
    db_commands.add_parser("migrate", help="create or upgrade the schema (safe to run twice)")
    db_commands.add_parser("retention", help="drop the months past OPSCENTRE_RETENTION_DAYS now (workers do it hourly)")
    db_commands.add_parser("rekey", help="rebuild the tables an older schema sorted by other keys under this "
                                         "version's (stop the workers first)")

    kpi = commands.add_parser("kpi", help="KPIs of a province (or all) over a period [from, to)")
    kpi.add_argument("--province", required=True, help="province code (e.g. 01), or 'all'")
    kpi.add_argument("--from", dest="start", type=_time, required=True, help="RFC 3339, inclusive")
    kpi.add_argument("--to", dest="end", type=_time, required=True, help="RFC 3339, exclusive")
    kpi.add_argument("--json", action="store_true", help="one JSON object per province")

    history = commands.add_parser("history", help="every stored event of one dossier or feedback item")
    history.add_argument("item_id", help="the dossier_id or feedback_id")
    history.add_argument("--json", action="store_true", help="one JSON object per event")

    overdue = commands.add_parser("overdue", help="a province's (or agency's) items overdue now, longest first")
    overdue.add_argument("--province", required=True, help="province code (e.g. 01)")
    overdue.add_argument("--agency", help="agency code (default: every agency)")
    overdue.add_argument("--at", type=_time, help="RFC 3339 instant (default: now)")
    overdue.add_argument("--feedback", action="store_true", help="feedback items instead of dossiers")
    overdue.add_argument("--json", action="store_true", help="one JSON object per item")

    card = commands.add_parser("scorecard", help="a province's scorecard against its targets, per agency")
    card.add_argument("--province", required=True, help="province code (e.g. 01)")
    card.add_argument("--from", dest="start", type=_time, required=True, help="RFC 3339, inclusive")
    card.add_argument("--to", dest="end", type=_time, required=True, help="RFC 3339, exclusive")
    form = card.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object per row (province, then agencies)")
    form.add_argument("--csv", action="store_true", help="CSV with a header row")

    alerts = commands.add_parser("alerts", help="business alerts: forward them from Kafka to Alertmanager")
    alert_commands = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", parser_class=_Parser)
    alert_commands.required = True
    forward = alert_commands.add_parser(
        "forward", help="post the alerts topic's business alerts to Alertmanager, resolve them, re-send active ones")
    forward.add_argument("--alertmanager", metavar="URL",
                         help="Alertmanager's address, e.g. http://alertmanager:9093 (default OPSCENTRE_ALERTMANAGER)")

    boards = commands.add_parser("dashboards", help="the Grafana boards: a provisioning tree, or pushed to a Grafana")
    board_commands = boards.add_subparsers(dest="dashboards_command", metavar="ACTION", parser_class=_Parser)
    board_commands.required = True
    build = board_commands.add_parser(
        "build", help="write the provisioning tree (data sources, folders, boards) into DIR, emptied first")
    build.add_argument("--out", required=True, metavar="DIR", help="output directory (new, empty, or an earlier build)")
    push = board_commands.add_parser(
        "push", help="create or update folders, data sources and boards in a Grafana (token: OPSCENTRE_GRAFANA_TOKEN)")
    push.add_argument("--grafana", required=True, metavar="URL", help="Grafana's address, e.g. http://grafana:3000")
    push.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    return parser


def _store(settings: Settings):
    from .clickhouse import connect

    return connect(settings.require_clickhouse(), settings.clickhouse_timeout_s)


def cmd_simulate(args, settings: Settings) -> int:
    from producers.batching import BatchingProducer
    from producers.simulator import simulate

    from .kafka import ensure_topics
    from .telemetry import serve_metrics

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    ensure_topics(settings)
    serve_metrics(settings)
    producer = BatchingProducer(settings)
    start_ms = int(args.start.timestamp() * 1000) if args.start else None
    shape = "steady" if args.steady else "peak, office hours"
    print(f"simulate: seed {seed}, {args.rate:g} events/s ({shape}) for {args.duration:g}s", file=sys.stderr)
    try:
        sent = simulate(producer, args.rate, args.duration, seed, start_ms, paced=not args.no_pacing,
                        steady=args.steady)
    except KeyboardInterrupt:
        sent = producer.events_sent
    producer.close()
    print(f"simulate: sent {sent} events", file=sys.stderr)
    return 0


def cmd_ingest(args, settings: Settings) -> int:
    from producers.batching import BatchingProducer
    from producers.ingest import ingest

    from .kafka import ensure_topics

    if args.path != "-":
        try:
            open(args.path, "rb").close()
        except OSError as exc:
            raise CommandError(f"cannot read {args.path}: {exc.strerror}") from None
    ensure_topics(settings)
    producer = BatchingProducer(settings)
    report = ingest(producer, args.path)
    producer.close()
    print(
        f"ingest: {report.lines} lines, {report.events} events sent, "
        f"{report.unparsed} lines not JSON objects (sent for rejection)",
        file=sys.stderr,
    )
    return 0


def cmd_worker(args, settings: Settings) -> int:
    from streams.app import run_worker

    run_worker(settings, loglevel="info" if args.verbose else "warning")
    return 0


def cmd_db(args, settings: Settings) -> int:
    from sinks.retention import apply_retention
    from sinks.schema import migrate, rekey
    from streams.lifecycle import fill

    store = _store(settings)
    if args.db_command == "retention":
        dropped = apply_retention(store, settings.retention_days)
        print(f"retention {settings.retention_days} days: " + (", ".join(dropped) if dropped else "nothing to drop"))
        return 0
    if args.db_command == "rekey":
        migrate(store)
        try:
            rebuilt = rekey(store)
        except ValueError as error:
            raise CommandError(str(error)) from None
        print(f"{len(rebuilt)} tables rebuilt" if rebuilt else "every table has this version's sorting key already")
        return 0
    version = migrate(store)
    if fill(store):
        print("lifecycle counts computed from the stored events")
    print(f"schema version {version} ready in {store.describe()} (server {'.'.join(map(str, store.server_version()))})")
    return 0


def cmd_kpi(args, settings: Settings) -> int:
    from dashboards.kpi import format_table, kpis

    from .catalogue import load_catalogue
    from .provinces import load_provinces

    if args.province != "all" and args.province not in load_provinces(settings.provinces_file):
        raise CommandError(f"unknown province code {args.province!r} (see the province list, or use 'all')")
    if args.end <= args.start:
        raise CommandError("--to must be after --from")
    catalogue = load_catalogue(settings.catalogue_file)
    results = kpis(_store(settings), args.province, args.start, args.end, catalogue)
    if args.json:
        for result in results:
            print(json.dumps(result, ensure_ascii=False))
    else:
        print(format_table(results))
    return 0


def cmd_scorecard(args, settings: Settings) -> int:
    from dashboards.scorecard import format_table, scorecard, to_csv

    from .catalogue import load_catalogue
    from .provinces import load_provinces

    if args.province not in load_provinces(settings.provinces_file):
        raise CommandError(f"unknown province code {args.province!r} (see the province list)")
    if args.end <= args.start:
        raise CommandError("--to must be after --from")
    catalogue = load_catalogue(settings.catalogue_file)
    rows = scorecard(_store(settings), settings, args.province, args.start, args.end, catalogue)
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    elif args.csv:
        sys.stdout.write(to_csv(rows))
    else:
        print(format_table(rows))
    return 0


def cmd_history(args, settings: Settings) -> int:
    from dashboards.drilldown import format_history, item_history

    events = item_history(_store(settings), args.item_id)
    if args.json:
        for event in events:
            print(json.dumps(event, ensure_ascii=False))
    else:
        print(format_history(args.item_id, events))
    return 0


def cmd_overdue(args, settings: Settings) -> int:
    import time

    from dashboards.drilldown import format_overdue, overdue_items

    from .provinces import load_provinces

    if args.province not in load_provinces(settings.provinces_file):
        raise CommandError(f"unknown province code {args.province!r} (see the province list)")
    at_ms = int((args.at.timestamp() if args.at else time.time()) * 1000)
    items = overdue_items(_store(settings), at_ms, args.province, args.agency, "feedback" if args.feedback else "dossier")
    if args.json:
        for item in items:
            print(json.dumps(item, ensure_ascii=False))
    else:
        print(format_overdue(items))
    return 0


def cmd_replay(args, settings: Settings) -> int:
    from streams.replay import ReplayError, parse_offsets, replay

    from .clickhouse import connect, with_database

    if (args.from_offsets is None) == (args.start is None):
        raise CommandError("give either --from-offsets or --from")
    if args.to_offsets and args.start is not None or args.end is not None and args.from_offsets is not None:
        raise CommandError("--to-offsets goes with --from-offsets, --to with --from")
    try:
        start = parse_offsets(args.from_offsets, settings.event_topics) if args.from_offsets else None
        end = parse_offsets(args.to_offsets, settings.event_topics) if args.to_offsets else None
    except ReplayError as exc:
        raise CommandError(str(exc)) from None
    if end == "earliest":
        raise CommandError("--to-offsets takes TOPIC:PARTITION:OFFSET,...")
    url = settings.require_clickhouse()
    if args.into:
        url = with_database(url, args.into)
    store = connect(url, settings.clickhouse_timeout_s)
    to_ms = lambda t: None if t is None else int(t.timestamp() * 1000)  # noqa: E731
    try:
        report = replay(settings, store, start=start, end=end, start_ms=to_ms(args.start), end_ms=to_ms(args.end))
    except ReplayError as exc:
        raise CommandError(str(exc)) from None
    print(f"replay: {report.records:,} records in {report.seconds:.1f}s into {store.describe()}", file=sys.stderr)
    return 0


def cmd_dashboards(args, settings: Settings) -> int:
    from pathlib import Path

    from dashboards.build import build
    from dashboards.grafana.provisioning import BuildError
    from dashboards.grafana.push import PushError, push

    try:
        if args.dashboards_command == "build":
            out = Path(args.out).resolve()
            written = build(out, settings)
            print(f"dashboards build: {len(written)} files in {out}")
        else:
            push(args.grafana, settings, dry_run=args.dry_run)
    except (BuildError, PushError) as exc:
        raise CommandError(str(exc)) from None
    return 0


def cmd_alerts(args, settings: Settings) -> int:
    from sinks.alertmanager import forward

    if args.alertmanager:
        settings = settings.with_overrides(alertmanager=args.alertmanager)
    forward(settings)
    return 0


def cmd_run(args, settings: Settings) -> int:
    from .local import run_local

    return run_local(settings, rate=args.rate, duration_s=args.duration, seed=args.seed, steady=args.steady)


COMMANDS = {
    "run": cmd_run, "simulate": cmd_simulate, "ingest": cmd_ingest, "worker": cmd_worker,
    "db": cmd_db, "kpi": cmd_kpi, "scorecard": cmd_scorecard, "replay": cmd_replay,
    "history": cmd_history, "overdue": cmd_overdue,
    "dashboards": cmd_dashboards, "alerts": cmd_alerts,
}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Client libraries log every failed connection attempt; the command reports the outcome once.
        for noisy in ("kafka", "clickhouse_driver", "aiokafka"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    from .clickhouse import StoreError
    from .kafka import KafkaUnavailable

    try:
        settings = Settings.from_env()
        return COMMANDS[args.command](args, settings)
    except (SettingsError, CommandError, StoreError, KafkaUnavailable, OSError, ValueError) as exc:
        print(f"opscentre {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # Kafka client errors and the like: still one line
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            print(f"opscentre {args.command}: Kafka error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
