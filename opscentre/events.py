"""The event contract (CONTRACT §1): types, limits, decoding, and rejection reasons.

A Kafka record value holds one event object or a JSON array of them. Decoding
is done by msgspec against typed structs; only when a record fails as a whole
is it taken apart item by item, so that one bad item rejects that item alone
with a reason a person can act on.

Whatever a record holds, decoding returns events or rejections and raises
nothing: the limits below bound what a record may hold (and what it costs),
and every value that reaches ClickHouse fits its column. A reason never
repeats a personal field's value, nor the content of a record that is not
an event object.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from typing import Annotated, ClassVar, Literal, NamedTuple, Union

import msgspec
from msgspec import Meta, Struct

from .json_structure import depth_bound, scan

# Limits (README, "Limits of a record"). A record over MAX_RECORD_BYTES, holding more than
# MAX_ITEMS items, or nested deeper than MAX_DEPTH is rejected as a whole; an item nested
# deeper than MAX_DEPTH is rejected alone. No valid batch comes near MAX_ITEMS: the smallest
# valid event takes about 150 bytes, so a 1 MiB record holds at most ~7,000.
MAX_RECORD_BYTES = 1 << 20
MAX_ITEMS = 10_000
MAX_DEPTH = 64
# Timestamps must fit ClickHouse's DateTime (seconds in 32 bits: up to 2106-02-07).
MIN_MS, MAX_MS = 0, 4_291_747_199_999  # 1970-01-01T00:00:00Z .. 2105-12-31T23:59:59.999Z
YEARS = "1970–2105"
MAX_AMOUNT_VND = 10**15
MAX_ALERT_COUNT = (1 << 32) - 1

# Fields holding a personal identifier (CONTRACT §1): pseudonymised before anything is stored,
# never repeated in a rejection reason, replaced by their pseudonym in stored rejections.
PERSONAL_FIELDS = frozenset({"applicant_id"})

Millis = int  # range-checked by the validator, so that every timestamp has the same reason
AwareDatetime = Annotated[_dt.datetime, Meta(tz=True)]
Timestamp = Union[Millis, AwareDatetime]
EventId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Code = Annotated[str, Meta(min_length=1, max_length=64)]
ItemId = Annotated[str, Meta(min_length=1, max_length=128)]


SERVICE_LEVELS = ("full_online", "partial_online", "offline")  # toàn trình, một phần, trực tiếp

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_ONE_MS = _dt.timedelta(milliseconds=1)


def to_millis(ts: int | _dt.datetime) -> int:
    """Epoch milliseconds of an `occurred_at`/`due_at` value as decoded (aware, or already ms),
    rounded down as the contract's millisecond times are. Timedelta arithmetic in C: half the
    cost of arithmetic on the fields, and this runs for nearly every event."""
    if type(ts) is int:
        return ts
    return (ts - _EPOCH) // _ONE_MS


class Event(Struct, tag_field="event_type", kw_only=True, frozen=True):
    topic: ClassVar[str] = "service"
    event_id: EventId
    occurred_at: Timestamp
    province: Code
    agency: Code
    source: Code
    schema_version: int = 1

    @property
    def event_type(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]


class DossierReceived(Event, tag="dossier.received", kw_only=True, frozen=True):
    dossier_id: ItemId
    procedure_code: Code
    service_level: Literal[SERVICE_LEVELS]
    channel: Literal["online", "in_person", "postal"]
    due_at: Timestamp
    applicant_id: Union[Annotated[str, Meta(max_length=128)], None] = None


class DossierCompleted(Event, tag="dossier.completed", kw_only=True, frozen=True):
    dossier_id: ItemId
    procedure_code: Code
    due_at: Timestamp
    result: Literal["approved", "rejected"]
    digitized: Union[bool, None] = None


class DossierCancelled(Event, tag="dossier.cancelled", kw_only=True, frozen=True):
    dossier_id: ItemId
    procedure_code: Code


class PaymentCompleted(Event, tag="payment.completed", kw_only=True, frozen=True):
    dossier_id: ItemId
    amount_vnd: Annotated[int, Meta(ge=0, le=MAX_AMOUNT_VND)]
    method: Literal["online", "counter"]


class FeedbackReceived(Event, tag="feedback.received", kw_only=True, frozen=True):
    feedback_id: ItemId
    channel: Literal["hotline_1022", "portal", "app", "field_report"]
    due_at: Timestamp


class FeedbackResolved(Event, tag="feedback.resolved", kw_only=True, frozen=True):
    feedback_id: ItemId
    due_at: Timestamp
    satisfied: Union[bool, None] = None


class DocumentExchanged(Event, tag="document.exchanged", kw_only=True, frozen=True):
    document_id: ItemId
    direction: Literal["sent", "received"]


class SecurityAlert(Event, tag="security.alert", kw_only=True, frozen=True):
    topic: ClassVar[str] = "security"
    category: Literal[
        "authentication", "intrusion_detection", "malware", "network", "web",
        "vulnerability", "threat", "configuration", "iam",
    ]
    severity: Annotated[int, Meta(ge=0, le=6)]
    action: Literal["blocked", "detected", "allowed"]
    sensor: Code
    dst_asset: Code
    src_ip: Union[Annotated[str, Meta(max_length=64)], None] = None
    rule_id: Union[Annotated[str, Meta(max_length=128)], None] = None
    technique: Union[Annotated[str, Meta(max_length=64)], None] = None
    count: Annotated[int, Meta(ge=1, le=MAX_ALERT_COUNT)] = 1


SERVICE_TYPES = (
    DossierReceived, DossierCompleted, DossierCancelled, PaymentCompleted,
    FeedbackReceived, FeedbackResolved, DocumentExchanged,
)
SECURITY_TYPES = (SecurityAlert,)
EVENT_TYPES = {cls.__struct_config__.tag: cls for cls in SERVICE_TYPES + SECURITY_TYPES}
AnyEvent = Union[SERVICE_TYPES + SECURITY_TYPES]  # type: ignore[valid-type]

# OCSF severity_id: 0 unknown, 1 informational, 2 low, 3 medium, 4 high, 5 critical, 6 fatal.
HIGH_SEVERITY = 4  # "high or critical" in CONTRACT §2 counts severity >= this


def topic_kind(event_type: str) -> str:
    """'security' or 'service': which topic an event type travels on."""
    return "security" if event_type.startswith("security.") else "service"


def routing_key(event: dict) -> str | None:
    """The record key of an event: one dossier's (or item's) events share a partition."""
    for field in ("dossier_id", "feedback_id", "document_id", "dst_asset"):
        value = event.get(field)
        if isinstance(value, str):
            return value
    value = event.get("event_id")
    return value if isinstance(value, str) else None


class Pseudonymiser:
    """Keyed hash of a personal identifier: HMAC-SHA256, hex.

    The key's inner and outer SHA-256 states are computed once (RFC 2104), which
    makes a call 2.5x cheaper than `hmac.digest`: this runs for every dossier received.
    """

    def __init__(self, key: bytes):
        import hashlib

        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __call__(self, identifier: str) -> str:
        return self.digest(identifier.encode())

    def digest(self, data: bytes) -> str:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class Rejection(NamedTuple):
    """One record, or one item of a batch, that is not a valid event."""

    item_index: int | None  # position in the batch; None for a single-event record
    reason: str
    original: bytes


class Decoded(NamedTuple):
    events: list  # valid events
    indexes: list  # item index of each valid event (None for a single-event record)
    occurred_ms: list  # occurred_at of each valid event, epoch milliseconds
    rejections: list  # Rejection


_BATCH = msgspec.json.Decoder(Union[list[AnyEvent], AnyEvent])  # type: ignore[valid-type]
_ONE = msgspec.json.Decoder(AnyEvent)
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_ANY = msgspec.json.Decoder()
# msgspec raises RecursionError, not DecodeError, past the interpreter's recursion limit.
_PARSE_ERRORS = (msgspec.DecodeError, RecursionError)
_DUE_TYPES = frozenset({DossierReceived, DossierCompleted, FeedbackReceived, FeedbackResolved})
_RECEIPT_TYPES = frozenset({DossierReceived, FeedbackReceived})


def retention_start_ms(now_ms: int, days: int) -> int:
    """The start of the oldest month kept (UTC): `days` back from now, to the first of that month.
    Nothing before it is accepted (CONTRACT §2: late events count within raw-data retention), so
    every count of a month kept is a sum of rows kept (sinks/retention.py). 0 days: no start."""
    if days <= 0:
        return MIN_MS
    return _retention_start(max(0, now_ms - days * 86_400_000) // 3_600_000)


@functools.lru_cache(maxsize=64)
def _retention_start(hour: int) -> int:  # per hour: it runs for every record
    then = _dt.datetime.fromtimestamp(hour * 3600, _dt.timezone.utc)
    return int(_dt.datetime(then.year, then.month, 1, tzinfo=_dt.timezone.utc).timestamp() * 1000)


def _whole(reason: str, value: bytes) -> Decoded:
    return Decoded([], [], [], [Rejection(None, reason, value)])


class Validator:
    """Decodes record values into events; explains every rejection; raises nothing."""

    def __init__(self, provinces, max_future_ms: int = 600_000, retention_days: int = 0):
        self.provinces = frozenset(provinces)
        self.max_future_ms = max_future_ms
        self.retention_days = retention_days
        self._limits = (None, 0, 0)  # (now_ms, latest, earliest) of the last check: a run shares its now

    def _limits_at(self, now_ms: int) -> tuple:
        """(latest, earliest) accepted occurred times at `now_ms`."""
        if self._limits[0] != now_ms:
            self._limits = (now_ms, now_ms + self.max_future_ms, retention_start_ms(now_ms, self.retention_days))
        return self._limits[1:]

    def decode(self, value: bytes | None, now_ms: int) -> Decoded:
        if value is None:
            return _whole("record has no value (expected a JSON event or array of events)", b"")
        if len(value) > MAX_RECORD_BYTES:
            return _whole(f"record is {len(value):,} bytes, over the limit of {MAX_RECORD_BYTES:,} (send smaller batches)",
                          value)
        try:
            decoded = _BATCH.decode(value)
        except _PARSE_ERRORS:
            return self._decode_items(value, now_ms)
        if type(decoded) is list:
            if not decoded or len(decoded) > MAX_ITEMS:
                return self._decode_items(value, now_ms)
            events, indexes = decoded, list(range(len(decoded)))
        else:
            events, indexes = [decoded], [None]
        # Deep nesting can hide in fields the contract ignores. Counting brackets (C speed) settles
        # nearly every record: few brackets, or exactly one object per event (and one array).
        objects, arrays = value.count(b"{"), value.count(b"[")
        if objects + arrays > MAX_DEPTH and (objects != len(events) or arrays != (indexes[0] is not None)):
            if scan(value).depth > MAX_DEPTH:
                return self._decode_items(value, now_ms)
        return self._check(events, indexes, [], now_ms, value, None)

    def _decode_items(self, value: bytes, now_ms: int) -> Decoded:
        """The slow path: a record that is not a valid event or batch as a whole."""
        first = value.lstrip(_SPACE)[:1]
        if first == b"{":
            return self._decode_each([(None, value, None)], now_ms, value)
        if first != b"[":
            return _whole(_record_reason(value), value)
        items = None
        if value.count(b",") < MAX_ITEMS:  # fewer items than the limit, whatever the commas belong to
            try:
                items = [(index, bytes(raw), None) for index, raw in enumerate(_RAW_ITEMS.decode(value))]
            except _PARSE_ERRORS:
                pass
        if items is None:
            structure = scan(value, MAX_ITEMS)
            if not structure.balanced:
                if structure.depth > MAX_DEPTH:
                    return _whole(f"record is nested deeper than {MAX_DEPTH} levels", value)
                return _whole(_record_reason(value), value)
            if structure.item_count > MAX_ITEMS:
                return _whole(f"record is a batch of {structure.item_count:,} items, over the limit of {MAX_ITEMS:,} "
                              "(send smaller batches)", value)
            items = [(index, value[start:end].strip(_SPACE), depth)
                     for index, (start, end, depth) in enumerate(structure.items)]
        if not items:
            return _whole("record is an empty JSON array (expected one event or more)", value)
        return self._decode_each(items, now_ms, value)

    def _decode_each(self, items: list, now_ms: int, value: bytes) -> Decoded:
        """(index, bytes, depth or None) of each item: events, or a rejection each."""
        events, indexes, rejections, originals = [], [], [], {}
        for index, item, depth in items:
            what = "record" if index is None else "item"
            if depth is None and depth_bound(item) > MAX_DEPTH:
                depth = scan(item).depth - (1 if index is None else 0)
            if depth is not None and depth > MAX_DEPTH - (0 if index is None else 1):
                rejections.append(Rejection(index, f"{what} is nested deeper than {MAX_DEPTH} levels", item))
                continue
            try:
                event = _ONE.decode(item)
            except _PARSE_ERRORS as exc:
                rejections.append(Rejection(index, _item_reason(item, exc, what), item))
                continue
            events.append(event)
            indexes.append(index)
            originals[index] = item
        return self._check(events, indexes, rejections, now_ms, value, originals)

    def _check(self, events, indexes, rejections, now_ms, value, originals) -> Decoded:
        """Checks msgspec cannot express: timestamps in range, the province list, the future limit."""
        provinces = self.provinces
        latest, earliest = self._limits_at(now_ms)
        if len(events) == 1 and not rejections:  # a single event, most often valid: the same checks, inline
            event = events[0]
            occurred = to_millis(event.occurred_at)
            cls = type(event)
            if earliest <= occurred <= latest and MIN_MS <= occurred <= MAX_MS and event.province in provinces and (
                    cls not in _DUE_TYPES or (MIN_MS <= (due := to_millis(event.due_at)) <= MAX_MS
                                              and (cls not in _RECEIPT_TYPES or due >= earliest))):
                return Decoded(events, indexes, [occurred], rejections)
        occurred_ms = [to_millis(event.occurred_at) for event in events]
        bad = None
        for position, event in enumerate(events):
            occurred = occurred_ms[position]
            if not MIN_MS <= occurred <= MAX_MS:
                reason = f"field 'occurred_at': {_timestamp_text(event.occurred_at, occurred)} is outside {YEARS}"
            elif event.province not in provinces:
                reason = f"field 'province': unknown province code {event.province!r}"
            elif occurred > latest:
                reason = (
                    f"field 'occurred_at': {_iso(occurred)} is more than "
                    f"{self.max_future_ms // 60000} minutes in the future"
                )
            elif type(event) in _DUE_TYPES and not MIN_MS <= (due := to_millis(event.due_at)) <= MAX_MS:
                reason = f"field 'due_at': {_timestamp_text(event.due_at, due)} is outside {YEARS}"
            elif occurred < earliest:
                reason = (f"field 'occurred_at': {_iso(occurred)} is before {_iso(earliest)}, the start of the "
                          f"{self.retention_days}-day retention")
            elif type(event) in _RECEIPT_TYPES and to_millis(event.due_at) < earliest:
                reason = (f"field 'due_at': {_iso(to_millis(event.due_at))} is before {_iso(earliest)}, the start of "
                          f"the {self.retention_days}-day retention")
            else:
                continue
            if bad is None:
                bad = set()
            bad.add(position)
            index = indexes[position]
            if index is None:
                original = value
            else:
                if originals is None:  # only a batch that decoded whole gets here: its items are sound
                    originals = dict(enumerate(bytes(raw) for raw in _RAW_ITEMS.decode(value)))
                original = originals[index]
            rejections.append(Rejection(index, reason, original))
        if bad:
            keep = [p for p in range(len(events)) if p not in bad]
            events = [events[p] for p in keep]
            indexes = [indexes[p] for p in keep]
            occurred_ms = [occurred_ms[p] for p in keep]
        if rejections:
            rejections.sort(key=lambda r: -1 if r.item_index is None else r.item_index)
        return Decoded(events, indexes, occurred_ms, rejections)


_SPACE = b" \t\r\n"


def _iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat()


def _timestamp_text(value, ms: int) -> str:
    """A timestamp outside the range, as given: the datetime, or the number of milliseconds."""
    if type(value) is not int:
        return value.isoformat()
    if -10**16 < ms < 10**16:
        return f"{ms} ms"
    if abs(ms) < 10**300:
        return f"{float(ms):.3g} ms"
    return f"{'-' if ms < 0 else ''}a number of {len(str(abs(ms)))} digits (ms)"


def _json_type(value) -> str:
    """'a JSON string', 'JSON null', ...: what a value is, without repeating it."""
    if value is None:
        return "JSON null"
    return {bool: "a JSON boolean", int: "a JSON number", float: "a JSON number", str: "a JSON string",
            list: "a JSON array", dict: "a JSON object"}.get(type(value), "a JSON value")


def _record_reason(value: bytes, exc: Exception | None = None) -> str:
    """Why a record is not an event or a batch: its JSON type, never its content."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"record is not UTF-8 text (byte {bad.start})"
    try:
        document = _ANY.decode(value)
    except RecursionError:
        return f"record is nested deeper than {MAX_DEPTH} levels"
    except msgspec.DecodeError as error:
        return f"record is not valid JSON: {_plain(str(exc or error))}"
    return f"record is {_json_type(document)}, not an event object or an array of events"


_TYPE_WORDS = {
    "`str`": "string", "`int`": "integer", "`bool`": "boolean", "`object`": "object",
    "`array`": "array", "`null`": "null", "`float`": "number", "`int | datetime`": "RFC 3339 timestamp or epoch milliseconds",
    "`datetime`": "RFC 3339 timestamp", "`str | null`": "string or null", "`bool | null`": "boolean or null",
}
_ECHO_LIMIT = 80  # characters of a wrong value repeated in a reason


def _text(value) -> str:
    """A wrong value as JSON, shortened: what a reason repeats of a field that is not personal."""
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + f"… ({len(text):,} characters)"


def _item_reason(item: bytes, exc: Exception, what: str = "item") -> str:
    """Turn a msgspec error into `field 'x': expected ..., got ...`."""
    message = str(exc)
    path = None
    if " - at `$" in message:
        message, _, path = message.partition(" - at `$")
        path = path.rstrip("`")
    try:
        item.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"{what} is not UTF-8 text (byte {bad.start})"
    if "out of range" in message and _field_of(path):  # parsing it again to say so costs as much again
        return f"field '{_field_of(path)}': number out of range"
    try:
        document = _ANY.decode(item)
    except _PARSE_ERRORS as error:
        field = _field_of(path)
        if field and "out of range" in str(error):
            return f"field '{field}': number out of range"
        return f"{what} is not valid JSON: {_plain(str(error))}"
    if not isinstance(document, dict):
        return f"{what} is {_json_type(document)}, not an event object"
    if message.startswith("Object missing required field `"):
        field = message.split("`")[1]
        if field == "event_type":
            return "field 'event_type': missing (expected one of " + ", ".join(sorted(EVENT_TYPES)) + ")"
        event_type = document.get("event_type")
        return f"field '{field}': missing (required for {_text(event_type) if type(event_type) is not str else event_type})"
    field = _field_of(path)
    got = document.get(field, None) if field else None
    got_text = _json_type(got) if field in PERSONAL_FIELDS else _text(got)
    if field == "event_type":
        return f"field 'event_type': unknown event type {got_text} (expected one of {', '.join(sorted(EVENT_TYPES))})"
    if message.startswith("Invalid enum value"):
        allowed = _allowed_values(document.get("event_type"), field)
        return f"field '{field}': expected one of {', '.join(allowed)}, got {got_text}"
    if message.startswith("Invalid RFC3339") or "timezone component" in message:
        what = "RFC 3339 timestamp with offset" if field in ("occurred_at", "due_at") else "RFC 3339 timestamp"
        if field in ("occurred_at", "due_at"):
            what += " or epoch milliseconds"
        return f"field '{field}': expected {what}, got {got_text}"
    if message.startswith("Expected "):
        expected = message[len("Expected "):]
        if ", got " in expected:
            expected = expected.partition(", got ")[0]
        for word, plain in _TYPE_WORDS.items():
            expected = expected.replace(word, plain)
        expected = expected.replace("`", "")
        return f"field '{field}': expected {expected}, got {got_text}"
    return f"field '{field}': {_plain(message)}, got {got_text}"


def _plain(message: str) -> str:
    """A parser's message without the values it may quote (they can be long, or personal)."""
    message = re.sub(r"'[^']*'|`[^`]*`", "…", message)
    return message if len(message) <= 160 else message[:160] + "…"


def _field_of(path: str | None) -> str | None:
    if not path:
        return None
    path = path.lstrip(".")
    for stop in (".", "["):
        path = path.split(stop)[0]
    return path or None


def _allowed_values(event_type, field) -> list[str]:
    import typing

    cls = EVENT_TYPES.get(event_type) if type(event_type) is str else None
    if cls is None:
        return []
    hint = typing.get_type_hints(cls).get(field)
    return [str(v) for v in typing.get_args(hint)]
