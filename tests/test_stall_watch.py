"""The stall watch says where a worker holding records is stuck, once per stall."""

from __future__ import annotations

import threading

from streams.app import StallWatch


def test_a_stall_is_reported_once_with_the_stage_and_the_loop_stack():
    held = [False]
    watch = StallWatch(30.0, lambda: held[0])
    watch.loop_thread = threading.get_ident()
    now = watch.stored_at
    assert watch.check(now + 100) is None  # holding nothing: idle, not stuck
    held[0] = True
    watch.stage = "publishing alerts"
    assert watch.check(now + 120) is None  # the clock starts when records are first held
    message = watch.check(now + 131)
    assert message.startswith("stored nothing for 31 s while holding processed records; no write in flight; "
                              "agent's last stage: publishing alerts")
    assert "test_a_stall_is_reported_once_with_the_stage_and_the_loop_stack" in message  # the loop's stack
    assert watch.check(now + 200) is None  # once per stall
    watch.stored()
    watch.writing()
    message = watch.check(watch.writing_since + 31)  # the next stall is reported again
    assert "; a ClickHouse write in flight for 31 s;" in message
