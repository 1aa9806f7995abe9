"""The naive baseline: a Faust agent that counts events per (minute, province, agency) in a Table.

Run by throughput.py as a subprocess; prints one JSON line with what it measured.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faust  # noqa: E402

from opscentre.events import to_millis  # noqa: E402


def main():
    bootstrap, topic, group, total, time_limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    app = faust.App(group, broker=f"kafka://{bootstrap}", value_serializer="raw", key_serializer="raw",
                    web_enabled=False, autodiscover=False, consumer_auto_offset_reset="earliest",
                    broker_session_timeout=6, broker_rebalance_timeout=5, broker_heartbeat_interval=1,
                    producer_max_batch_size=1, topic_partitions=4, consumer_max_fetch_size=4 << 20,
                    datadir=f"/tmp/{group}")
    counts = app.Table("counts", default=int, partitions=4)
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    state = {"events": 0, "first": None}

    def done():
        elapsed = time.monotonic() - state["first"]
        print(json.dumps({"events": state["events"], "seconds": elapsed, "first": state["first"]}), flush=True)
        os._exit(0)

    @app.agent(source)
    async def count(stream):
        async for value in stream:
            if state["first"] is None:
                state["first"] = time.monotonic()
            items = json.loads(value)
            for event in items if isinstance(items, list) else [items]:
                occurred = event["occurred_at"]
                minute = (occurred if isinstance(occurred, int) else to_millis(faust_time(occurred))) // 60000
                counts[f"{minute}|{event['province']}|{event['agency']}"] += 1
                state["events"] += 1
            if state["events"] >= total or time.monotonic() - state["first"] > time_limit:
                done()

    from faust.worker import Worker

    Worker(app, loglevel=os.environ.get("FAUST_LOGLEVEL", "error"), quiet=True, redirect_stdouts=False).execute_from_commandline()


def faust_time(text):
    import datetime

    return datetime.datetime.fromisoformat(text)


if __name__ == "__main__":
    main()
