"""`opscentre ingest PATH|-`: a JSONL file of events into Kafka, routed by event_type.

A line that is not a JSON object is reported (line number and reason) and
still sent, alone in its own record, so that the worker rejects it to the
dead-letter topic with its reason: nothing is lost.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import msgspec

from opscentre.events import routing_key, topic_kind

_decode = msgspec.json.Decoder().decode


@dataclass
class IngestReport:
    lines: int = 0
    events: int = 0
    unparsed: int = 0
    problems: list = field(default_factory=list)  # first problems, (line number, reason)


def ingest(producer, path: str, out=sys.stderr, progress_every_s: float = 2.0, max_reported: int = 20) -> IngestReport:
    report = IngestReport()
    if path == "-":
        handle, total_bytes = sys.stdin.buffer, None
    else:
        handle = open(path, "rb")
        total_bytes = os.path.getsize(path)
    started = last_progress = time.monotonic()
    read_bytes = 0
    try:
        for number, line in enumerate(handle, start=1):
            read_bytes += len(line)
            report.lines = number
            line = line.strip()
            if not line:
                continue
            try:
                event = _decode(line)
            except msgspec.DecodeError as exc:
                event, reason = None, f"not JSON ({exc})"
            else:
                reason = None if isinstance(event, dict) else "not a JSON object"
            if reason is None:
                event_type = event.get("event_type")
                kind = topic_kind(event_type) if isinstance(event_type, str) else "service"
                producer.send_encoded(kind, routing_key(event), line)
                report.events += 1
            else:
                report.unparsed += 1
                if len(report.problems) < max_reported:
                    report.problems.append((number, reason))
                    print(f"{path}:{number}: {reason}; sent for rejection to the dead-letter topic", file=out)
                producer.send_record("service", line)
            now = time.monotonic()
            if now - last_progress >= progress_every_s:
                last_progress = now
                share = f" ({100 * read_bytes / total_bytes:.0f}%)" if total_bytes else ""
                rate = report.lines / (now - started)
                print(f"ingest: {report.lines} lines{share}, {rate:,.0f} lines/s", file=out)
                producer.poll()
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    producer.flush()
    return report
