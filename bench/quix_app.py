"""Quix Streams doing the same windowed aggregation: 1-minute tumbling windows on event time,
counts per (province, agency). Quix windows by message key, and batch records have none, so it
re-keys through its own repartition topic (group_by). Run by throughput.py; prints one JSON line."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quixstreams import Application  # noqa: E402

from opscentre.events import to_millis  # noqa: E402


def main():
    bootstrap, topic_name, group, total, time_limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      state_dir=f"/tmp/{group}", loglevel=os.environ.get("QUIX_LOGLEVEL", "ERROR"))
    topic = app.topic(topic_name, value_deserializer="json")
    state = {"events": 0, "first": None}

    def count(value):
        if state["first"] is None:
            state["first"] = time.monotonic()
        state["events"] += 1
        if state["events"] >= total or time.monotonic() - state["first"] > time_limit:
            print(json.dumps({"events": state["events"], "seconds": time.monotonic() - state["first"], "first": state["first"]}), flush=True)
            os._exit(0)

    def event_time(value, key, timestamp, headers):
        occurred = value["occurred_at"]
        if isinstance(occurred, int):
            return occurred
        import datetime

        return to_millis(datetime.datetime.fromisoformat(occurred))

    sdf = app.dataframe(topic)
    sdf = sdf.apply(lambda value: value if isinstance(value, list) else [value], expand=True)
    sdf = sdf.group_by(lambda value: f"{value['province']}|{value['agency']}", name="province_agency")
    sdf = sdf.set_timestamp(event_time)
    sdf = sdf.tumbling_window(60_000, grace_ms=24 * 3_600_000).count().current()  # late events still count
    sdf = sdf.update(lambda window: count(window))
    app.run()


if __name__ == "__main__":
    main()
