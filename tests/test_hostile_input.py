"""Property tests of the validator and the processor on hostile input (unit level).

Generators produce what an outside system may send — any bytes, invalid UTF-8, lone surrogates,
nesting of any depth, numbers of any size, long strings, arrays of anything, duplicate keys,
oversized records — and mutations of valid events and batches. Whatever the input: decoding
raises nothing, each record or item ends as an event or a rejection with a reason, a valid event
inside a hostile batch is kept, every accepted value fits its ClickHouse column, and no reason,
stored rejection or log line repeats a personal identifier. About 12,000 inputs a run.

The same inputs through the real worker, broker and ClickHouse: tests/test_hostile_pipeline.py.
"""

from __future__ import annotations

import json
import logging

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opscentre.events import (
    MAX_AMOUNT_VND,
    MAX_ALERT_COUNT,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_MS,
    MAX_RECORD_BYTES,
    MIN_MS,
    PERSONAL_FIELDS,
    DossierReceived,
    PaymentCompleted,
    Pseudonymiser,
    SecurityAlert,
    Validator,
    to_millis,
)
from opscentre.provinces import load_provinces
from opscentre.rejections import MAX_LETTER_BYTES, dead_letter, stored_original
from producers.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # long reprs of big records
NOW_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z
VALIDATOR = Validator(load_provinces(None), max_future_ms=600_000)
PSEUDONYMISE = Pseudonymiser(b"test-key")
CITIZEN_IDS = ["001204012345", "079188009876", "038095001122"]  # 12-digit citizen id numbers (CCCD)
# 12,500 generated inputs a run: 3,000 for each of three properties, 1,500 for the hostile batches
# (up to 16 items each, the slowest to draw) and 2,000 for the record timestamps.
PROPERTY = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


def _valid_events() -> list[dict]:
    simulator = Simulator(5, 20.0, NOW_MS - 3_600_000, steady=True)
    events = [simulator.next_event() for _ in range(400)]
    for n, event in enumerate(events):
        if event["event_type"] == "dossier.received":
            event["applicant_id"] = CITIZEN_IDS[n % len(CITIZEN_IDS)]
    return events


VALID = _valid_events()
valid_event = st.sampled_from(VALID)

# -- hostile values and records --------------------------------------------------------------

huge_numbers = st.sampled_from([
    b"1e25", b"-1e25", b"1e400", b"-1e400", b"1" + b"0" * 400, b"-" + b"9" * 500, b"1" + b"0" * 5000,
    b"NaN", b"Infinity", b"-Infinity", b"1.5", b"-0", b"0.0", b"9223372036854775808", b"18446744073709551616",
    b"-1", b"4291747200000", b"253402300800000", b"-62135596800000",
])
timestamps = st.sampled_from([
    '"1969-12-31T23:59:59Z"', '"1960-01-01T00:00:00+07:00"', '"0001-01-01T00:00:00Z"', '"9999-12-31T23:59:59Z"',
    '"2106-01-01T00:00:00Z"', '"2026-13-45T99:99:99Z"', '"2026-11-18T11:00:00"', '"31/12/2026"', '""',
]).map(str.encode)
deep = st.integers(min_value=MAX_DEPTH - 2, max_value=20_000).flatmap(
    lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n, b"[" * n]))
strings = st.one_of(
    st.text(max_size=200).map(lambda t: json.dumps(t).encode()),
    st.sampled_from([b'"\\ud800"', b'"\\udfff x"', b'"\\ud83d"', b'"\xed\xa0\x80"', b'"\xff\xfe"', b'"\x00"',
                     b'"' + b"x" * 70_000 + b'"', b'"\\u0000' * 1000 + b'"']),
)
scalars = st.one_of(huge_numbers, timestamps, strings, st.sampled_from([b"null", b"true", b"false", b"[]", b"{}"]))


def json_value(depth: int = 3):
    if depth == 0:
        return scalars
    return st.one_of(
        scalars,
        st.lists(st.deferred(lambda: json_value(depth - 1)), max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]"),
        st.dictionaries(st.text(max_size=10), st.deferred(lambda: json_value(depth - 1)), max_size=4).map(
            lambda d: b"{" + b",".join(json.dumps(k).encode() + b":" + v for k, v in d.items()) + b"}"),
    )


def with_field(event: dict, field: str, raw: bytes) -> bytes:
    """The event as JSON with `field` set to the raw JSON text `raw` (replacing or adding it)."""
    body = json.dumps({k: v for k, v in event.items() if k != field})
    return body[:-1].encode() + b', "' + field.encode() + b'": ' + raw + b"}"


@st.composite
def mutated_event(draw) -> bytes:
    event = draw(valid_event)
    how = draw(st.sampled_from(["replace", "add", "drop", "duplicate_key", "truncate", "flip", "insert"]))
    text = json.dumps(event).encode()
    if how == "replace":
        return with_field(event, draw(st.sampled_from(sorted(event))), draw(json_value()))
    if how == "add":
        return with_field(event, draw(st.text(max_size=12)), draw(st.one_of(json_value(), deep)))
    if how == "drop":
        field = draw(st.sampled_from(sorted(event)))
        return json.dumps({k: v for k, v in event.items() if k != field}).encode()
    if how == "duplicate_key":
        field = draw(st.sampled_from(sorted(event)))
        return text[:-1] + b', "' + field.encode() + b'": ' + draw(json_value(1)) + b"}"
    position = draw(st.integers(min_value=0, max_value=len(text)))
    if how == "truncate":
        return text[:position]
    if how == "flip":
        byte = draw(st.integers(min_value=0, max_value=255))
        return text[:position] + bytes([byte]) + text[position + 1:]
    return text[:position] + draw(st.sampled_from([b"[", b"{", b'"', b"\\", b",", b"\xff", b"\x00", b"]]]"])) + text[position:]


hostile_item = st.one_of(mutated_event(), json_value(), deep, st.binary(max_size=300))
hostile_record = st.one_of(
    hostile_item,
    st.lists(st.one_of(hostile_item, valid_event.map(lambda e: json.dumps(e).encode())), max_size=30).map(
        lambda items: b"[" + b",".join(items) + b"]"),
    st.sampled_from([b"", b"null", b"[]", b"[[]]", b"{}", b" ", b"[" + b",".join([b"1"] * (MAX_ITEMS + 1)) + b"]",
                     b"[" + b",".join([b"{}"] * 200_000) + b"]", b"[" + b" " * MAX_RECORD_BYTES + b"]"]),
)

def whole_value(raw: bytes) -> bool:
    """Whether `raw` is one JSON value by another parser's account (Python's, which also takes NaN
    and lone surrogates): such an item cannot change where its neighbours begin and end."""
    try:
        json.loads(raw.decode("utf-8"))
        return True
    except (ValueError, RecursionError):
        return False


# -- properties ---------------------------------------------------------------------------------


def check_decoded(value: bytes, decoded) -> None:
    """What must hold for any input."""
    assert len(decoded.events) == len(decoded.indexes) == len(decoded.occurred_ms)
    for rejection in decoded.rejections:
        assert rejection.reason and isinstance(rejection.reason, str) and len(rejection.reason) < 1000
        assert isinstance(rejection.original, bytes)
        for citizen in CITIZEN_IDS:
            assert citizen not in rejection.reason
    indexes = [i for i in decoded.indexes] + [r.item_index for r in decoded.rejections]
    if None in indexes:  # one event or one rejection for the whole record
        assert len(indexes) == 1
    else:
        assert len(indexes) == len(set(indexes))
    assert decoded.events or decoded.rejections
    for event, occurred in zip(decoded.events, decoded.occurred_ms):
        fits_columns(event, occurred)


def fits_columns(event, occurred_ms: int) -> None:
    assert MIN_MS <= occurred_ms <= MAX_MS and occurred_ms == to_millis(event.occurred_at)
    if hasattr(event, "due_at"):
        assert MIN_MS <= to_millis(event.due_at) <= MAX_MS
    if isinstance(event, PaymentCompleted):
        assert 0 <= event.amount_vnd <= MAX_AMOUNT_VND
    if isinstance(event, SecurityAlert):
        assert 1 <= event.count <= MAX_ALERT_COUNT and 0 <= event.severity <= 6
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if isinstance(value, str):
            value.encode("utf-8")  # no lone surrogate reaches the writer


@PROPERTY
@given(hostile_record)
def test_any_record_decodes_to_events_or_reasons(value):
    check_decoded(value, VALIDATOR.decode(value, NOW_MS))


@settings(PROPERTY, max_examples=1500)
@given(st.lists(valid_event, min_size=1, max_size=8), st.lists(hostile_item, min_size=1, max_size=8), st.randoms())
def test_valid_events_in_a_hostile_batch_are_kept(valid, hostile, rnd):
    items = [(json.dumps(e).encode(), e) for e in valid] + [(h, None) for h in hostile]
    rnd.shuffle(items)
    value = b"[" + b",".join(raw for raw, _ in items) + b"]"
    decoded = VALIDATOR.decode(value, NOW_MS)
    check_decoded(value, decoded)
    kept = {index: event.event_id for event, index in zip(decoded.events, decoded.indexes)}
    if all(whole_value(raw) for raw, _ in items):  # no hostile item spills into its neighbours
        for index, (_, event) in enumerate(items):
            if event is not None:
                assert kept.get(index) == event["event_id"], (index, decoded.rejections)


@PROPERTY
@given(st.one_of(hostile_record, mutated_event()))
def test_stored_rejections_and_dead_letters_keep_no_identifier(value):
    for rejection in VALIDATOR.decode(value, NOW_MS).rejections:
        stored = stored_original(rejection.original, PSEUDONYMISE)
        for citizen in CITIZEN_IDS:
            assert citizen not in stored
        if stored:
            document = json.loads(stored)
            assert all(not isinstance(document.get(name), str) or document[name].startswith("pseudonym:")
                       for name in PERSONAL_FIELDS if name in document)
        letter = dead_letter(rejection.reason, "t", 0, 1, rejection.item_index, NOW_MS, rejection.original)
        assert len(letter) <= MAX_LETTER_BYTES
        decoded = msgspec.json.decode(letter)
        assert decoded["reason"] == rejection.reason


@PROPERTY
@given(valid_event)
def test_a_valid_event_is_accepted_whole(event):
    decoded = VALIDATOR.decode(json.dumps(event).encode(), NOW_MS)
    assert decoded.rejections == [] and decoded.events[0].event_id == event["event_id"]


def test_limits_reject_with_reasons():
    cases = {
        b"[" * 5000 + b"]" * 5000: "item is nested deeper than 64 levels",
        b"[" + b",".join([b"1"] * (MAX_ITEMS + 1)) + b"]": "record is a batch of 10,001 items, over the limit of 10,000",
        b" " * (MAX_RECORD_BYTES + 1): "record is 1,048,577 bytes, over the limit of 1,048,576",
        b"null": "record is JSON null, not an event object or an array of events",
        b"[]": "record is an empty JSON array",
        with_field(VALID[0], "occurred_at", b"10000000000000000000000000"): "field 'occurred_at': 1e+25 ms is outside 1970–2105",
        with_field(VALID[0], "occurred_at", b"-1"): "field 'occurred_at': -1 ms is outside 1970–2105",
        with_field(VALID[0], "occurred_at", b'"1969-12-31T23:59:59Z"'):
            "field 'occurred_at': 1969-12-31T23:59:59+00:00 is outside",
        with_field(VALID[0], "event_id", b"1" + b"0" * 5000): "field 'event_id': number out of range",
        with_field(VALID[0], "extra", b"[" * 70 + b"]" * 70): "record is nested deeper than 64 levels",
    }
    for value, reason in cases.items():
        (rejection,) = VALIDATOR.decode(value, NOW_MS).rejections
        assert rejection.reason.startswith(reason), (reason, rejection.reason)
    # Nesting the contract ignores is fine up to the limit (CONTRACT §1: unknown fields are ignored).
    assert VALIDATOR.decode(with_field(VALID[0], "extra", b"[" * 60 + b"]" * 60), NOW_MS).events


def test_a_personal_field_of_the_wrong_type_is_not_repeated():
    received = next(e for e in VALID if e["event_type"] == "dossier.received")
    for raw in (b"1204012345", b'["001204012345"]', b'{"number": "001204012345"}'):
        (rejection,) = VALIDATOR.decode(with_field(received, "applicant_id", raw), NOW_MS).rejections
        assert rejection.reason.startswith("field 'applicant_id': expected string")
        assert b"1204012345" not in rejection.reason.encode()
        assert "1204012345" not in stored_original(rejection.original, PSEUDONYMISE)


# -- the processor ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    from tests.test_processor import MemorySink, processor as make

    return make(MemorySink())


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=hostile_record, timestamp=st.sampled_from([NOW_MS - 60_000, -1, 0, NOW_MS + 3_600_000, MAX_MS + 1]))
def test_the_processor_takes_any_record(processor, caplog, value, timestamp):
    from streams.processor import INTERNAL_ERRORS

    before = INTERNAL_ERRORS.labels("t.service-events")._value.get()
    state = processor.partitions.get(("t.service-events", 0))
    offset = state.next_offset if state else 0
    with caplog.at_level(logging.INFO):
        letters = processor.process("t.service-events", 0, offset, timestamp, value)
    assert INTERNAL_ERRORS.labels("t.service-events")._value.get() == before
    for key, letter in letters:
        assert len(letter) <= MAX_LETTER_BYTES
    for citizen in CITIZEN_IDS:
        assert citizen not in caplog.text
    for row in processor.batch.rejected:
        assert all(citizen not in row[8] for citizen in CITIZEN_IDS)
    if offset % 50 == 49:
        processor.flush()


def test_received_dossier_keeps_only_the_pseudonym(processor):
    received = next(e for e in VALID if e["event_type"] == "dossier.received")
    assert isinstance(VALIDATOR.decode(json.dumps(received).encode(), NOW_MS).events[0], DossierReceived)
