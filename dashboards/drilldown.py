"""One item's history, and the items of an agency overdue now: queries bounded by the item or by the
backlog, never by the stored history.

- `item_history` reads `item_events`, ordered by item id.
- `overdue_items` reads `open_items`, which holds the items still open (and the ones closed in the
  last hour or so: the worker purges the others), and takes each one's pseudonym from `alerts`. It
  reads the agency's (or province's) rows and the closings of items the worker did not hold: any
  other closing is filed under its item's agency (sinks.schema.OPEN_ITEMS_VIEW). The pseudonyms
  are then read for the items listed only, by id (`alerts` holds every item ever overdue).
"""

from __future__ import annotations

import datetime as dt

from opscentre.clickhouse import Store, quote
from sinks.clickhouse_sink import literal_lists
from sinks.schema import UNHELD_CLOSING

HISTORY_COLUMNS = ("event_type", "occurred_ms", "due_ms", "province", "agency", "procedure_code", "service_level",
                   "channel", "result", "on_time", "method", "amount_vnd", "satisfied", "source_partition",
                   "source_offset")


def item_history(store: Store, item_id: str) -> list[dict]:
    """Every stored event of one dossier or feedback item (payments included), oldest first."""
    rows = store.query(
        f"SELECT {', '.join(HISTORY_COLUMNS)} FROM {store.table('item_events')} FINAL "
        f"WHERE item_id = {quote(item_id)} ORDER BY occurred_ms, source_offset")
    return [dict(zip(HISTORY_COLUMNS, row)) for row in rows]


def overdue_list_rows(table: str, kind: str, scope: str) -> str:
    """The rows of `open_items` (named `table`) an overdue list of `kind` within `scope` (a condition
    on province and agency) groups by item: the scope's own, as a closing is filed under its item's
    agency, and the closings of items the worker did not hold (sinks.schema.OPEN_ITEMS_VIEW)."""
    return f"(SELECT * FROM {table} WHERE kind = {quote(kind)} AND ({scope} OR closed = {UNHELD_CLOSING}))"


def overdue_items(store: Store, at_ms: int, province: str, agency: str | None = None, kind: str = "dossier",
                  limit: int = 1000) -> list[dict]:
    """Items received, not closed, due before `at_ms`, longest overdue first: (item_id, item_ref: the
    pseudonym boards show, agency, procedure_code, due_ms, hours_overdue)."""
    position = "source_offset * 100000 + item_index"
    scope = f"province = {quote(province)}" + ("" if agency is None else f" AND agency = {quote(agency)}")
    rows = store.query(
        f"SELECT item_id, agency, procedure_code, due_ms FROM ("
        f"SELECT kind, item_id, argMinIf(agency, {position}, NOT closed) AS agency, "
        f"argMinIf(procedure_code, {position}, NOT closed) AS procedure_code, "
        f"argMinIf(due_ms, {position}, NOT closed) AS due_ms FROM "
        f"{overdue_list_rows(store.table('open_items'), kind, scope)} GROUP BY kind, item_id "
        f"HAVING countIf(NOT closed) > 0 AND countIf(closed) = 0 AND due_ms < {int(at_ms)}) "
        f"ORDER BY due_ms, item_id LIMIT {int(limit)}")
    refs = {}
    for _, ids in literal_lists([quote(item_id) for item_id, *_ in rows]):  # alerts hold every item ever overdue
        refs.update(store.query(
            f"SELECT item_id, any(item_ref) FROM {store.table('alerts')} WHERE kind = {quote(kind)} "
            f"AND province = {quote(province)} AND item_id IN ({ids}) AND status = 'firing' GROUP BY item_id"))
    rows = [(item_id, refs.get(item_id), agency, procedure, due) for item_id, agency, procedure, due in rows]
    return [{"item_id": item_id, "item_ref": item_ref or None, "agency": agency, "procedure_code": procedure,
             "due_ms": int(due), "hours_overdue": round((int(at_ms) - int(due)) / 3_600_000, 1)}
            for item_id, item_ref, agency, procedure, due in rows]


def format_history(item_id: str, events: list[dict]) -> str:
    if not events:
        return f"no stored events for {item_id}"
    lines = [f"{item_id}: {len(events)} events"]
    for e in events:
        when = dt.datetime.fromtimestamp(e["occurred_ms"] / 1000, dt.timezone.utc).isoformat(timespec="seconds")
        detail = ", ".join(f"{key} {e[key]}" for key in ("procedure_code", "service_level", "channel", "result", "method")
                           if e[key])
        due = "" if not e["due_ms"] else " due " + dt.datetime.fromtimestamp(
            e["due_ms"] / 1000, dt.timezone.utc).isoformat(timespec="seconds")
        lines.append(f"  {when}  {e['event_type']:<20} {e['province']} {e['agency']}{due}  {detail}")
    return "\n".join(lines)


def format_overdue(items: list[dict]) -> str:
    if not items:
        return "nothing overdue"
    lines = [f"{'dossier':<24} {'pseudonym':<16} {'agency':<10} {'procedure':<12} {'due (UTC)':<20} hours overdue"]
    for item in items:
        due = dt.datetime.fromtimestamp(item["due_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        lines.append(f"{item['item_id']:<24} {(item['item_ref'] or '–')[:16]:<16} {item['agency']:<10} "
                     f"{item['procedure_code']:<12} {due:<20} {item['hours_overdue']:,.1f}")
    return "\n".join(lines)
