"""Working time of Vietnamese public offices, and how busy each channel is by the hour.

Legal time limits for administrative procedures count working days, so a
dossier filed on Friday evening with a half-day limit is due on Monday
morning. Offices work Monday to Friday, 07:30-11:30 and 13:30-17:00 (UTC+7);
public holidays are not modelled.
"""

from __future__ import annotations

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
UTC_OFFSET_MS = 7 * HOUR_MS
OFFICE_SPANS_MS = ((450 * MINUTE_MS, 690 * MINUTE_MS), (810 * MINUTE_MS, 1020 * MINUTE_MS))
WORKING_DAY_MS = sum(end - start for start, end in OFFICE_SPANS_MS)  # 7.5 hours
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def _local(ms: int) -> tuple[int, int, int]:
    """(day number, weekday, milliseconds into the day) in local time."""
    local = ms + UTC_OFFSET_MS
    day = local // DAY_MS
    return day, (day + _EPOCH_WEEKDAY) % 7, local - day * DAY_MS


class OfficeHours:
    """Working-time arithmetic; `always_open` makes every hour a working hour (steady simulations)."""

    def __init__(self, always_open: bool = False):
        self.always_open = always_open

    def is_open(self, ms: int) -> bool:
        if self.always_open:
            return True
        _, weekday, into_day = _local(ms)
        return weekday < 5 and any(start <= into_day < end for start, end in OFFICE_SPANS_MS)

    def add(self, ms: int, working_ms: int) -> int:
        """The moment `working_ms` of working time after `ms` (the next opening when `ms` is closed)."""
        if self.always_open:
            return ms + working_ms
        day, weekday, into_day = _local(ms)
        while True:
            if weekday < 5:
                if into_day == 0 and working_ms > WORKING_DAY_MS:
                    # Whole working days at once (a limit of weeks is common): five of them a week, then
                    # one a day; the last day is always walked, so an exact fit ends at its closing.
                    days = (working_ms - 1) // WORKING_DAY_MS
                    working_ms -= days * WORKING_DAY_MS
                    weeks, days = divmod(days, 5)
                    day += 7 * weeks
                    while days:
                        day += 1
                        weekday = (weekday + 1) % 7
                        days -= weekday < 5
                    continue
                for start, end in OFFICE_SPANS_MS:
                    if into_day >= end:
                        continue
                    begin = max(into_day, start)
                    if working_ms <= end - begin:
                        return day * DAY_MS + begin + working_ms - UTC_OFFSET_MS
                    working_ms -= end - begin
                    into_day = end
            day += 1
            weekday = (weekday + 1) % 7
            into_day = 0

    def between(self, start_ms: int, end_ms: int) -> int:
        """Working time from `start_ms` to `end_ms` (0 when end is not after start)."""
        if end_ms <= start_ms:
            return 0
        if self.always_open:
            return end_ms - start_ms
        total = 0
        day, weekday, into_day = _local(start_ms)
        end_day, _, end_into_day = _local(end_ms)
        while day <= end_day:
            if weekday < 5:
                limit = end_into_day if day == end_day else DAY_MS
                for start, end in OFFICE_SPANS_MS:
                    total += max(0, min(end, limit) - max(start, into_day))
            day += 1
            weekday = (weekday + 1) % 7
            into_day = 0
        return total

    def activity(self, ms: int) -> tuple[float, float, float, float]:
        """Share of peak traffic per channel (counter, online, hotline, always) at `ms`."""
        if self.always_open:
            return (1.0, 1.0, 1.0, 1.0)
        if self.is_open(ms):
            return (1.0, 1.0, 1.0, 1.0)
        _, weekday, into_day = _local(ms)
        hour = into_day / HOUR_MS
        daytime = 7 <= hour < 22
        counter = 0.0  # one-stop counters and officials work office hours only
        if weekday < 5:
            online = 0.5 if 6 <= hour < 22 else 0.08  # people file online at lunch and in the evening
            hotline = 1.0 if daytime else 0.2  # the 1022 hotline answers around the clock
        else:
            online = 0.3 if daytime else 0.08
            hotline = 0.6 if daytime else 0.2
        return (counter, online, hotline, 1.0)
