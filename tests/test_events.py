"""The validator's rejection reasons are part of the contract: pinned here."""

import hashlib
import hmac
import json

import pytest

from opscentre.events import (
    DossierReceived,
    Pseudonymiser,
    SecurityAlert,
    Validator,
    to_millis,
)
from opscentre.provinces import load_provinces

NOW_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z

ENVELOPE = {
    "event_id": "e-1", "occurred_at": "2026-11-18T18:00:00+07:00",
    "province": "01", "agency": "STP", "source": "dvc",
}
RECEIVED = dict(
    ENVELOPE, event_type="dossier.received", dossier_id="HS-1", procedure_code="1.004227",
    service_level="full_online", channel="online", due_at="2026-11-30T17:00:00+07:00",
)


@pytest.fixture(scope="module")
def validator():
    return Validator(load_provinces(None), max_future_ms=600_000)


def encode(value) -> bytes:
    return json.dumps(value).encode()


def reasons(validator, value) -> list:
    return [r.reason for r in validator.decode(encode(value) if not isinstance(value, bytes) else value, NOW_MS).rejections]


def test_single_valid_event(validator):
    decoded = validator.decode(encode(RECEIVED), NOW_MS)
    assert decoded.rejections == []
    assert decoded.indexes == [None]
    (event,) = decoded.events
    assert isinstance(event, DossierReceived)
    assert to_millis(event.occurred_at) == 1_794_999_600_000  # 11:00Z


def test_batch_and_epoch_millis(validator):
    alert = dict(ENVELOPE, event_type="security.alert", occurred_at=NOW_MS, category="web", severity=4,
                 action="blocked", sensor="waf", dst_asset="portal", extra_field={"ignored": True})
    decoded = validator.decode(encode([RECEIVED, alert]), NOW_MS)
    assert decoded.rejections == [] and decoded.indexes == [0, 1]
    assert isinstance(decoded.events[1], SecurityAlert) and decoded.events[1].count == 1


@pytest.mark.parametrize("change, reason", [
    ({"due_at": "31/12/2026"},
     "field 'due_at': expected RFC 3339 timestamp with offset or epoch milliseconds, got \"31/12/2026\""),
    ({"occurred_at": "2026-11-18T18:00:00"},
     "field 'occurred_at': expected RFC 3339 timestamp with offset or epoch milliseconds, got \"2026-11-18T18:00:00\""),
    ({"due_at": None}, "field 'due_at': missing (required for dossier.received)"),
    ({"service_level": "fully"},
     "field 'service_level': expected one of full_online, partial_online, offline, got \"fully\""),
    ({"province": "99"}, "field 'province': unknown province code '99'"),
    ({"agency": 5}, "field 'agency': expected string, got 5"),
    ({"event_id": "a b"}, "field 'event_id': expected string matching regex '^[A-Za-z0-9._:-]+$', got \"a b\""),
    ({"event_id": "x" * 65}, "field 'event_id': expected string of length <= 64, got \"" + "x" * 65 + "\""),
    ({"event_type": "dossier.opened"},
     "field 'event_type': unknown event type \"dossier.opened\" (expected one of document.exchanged, "
     "dossier.cancelled, dossier.completed, dossier.received, feedback.received, feedback.resolved, "
     "payment.completed, security.alert)"),
    ({"occurred_at": "2026-11-18T11:20:00Z"}, "field 'occurred_at': 2026-11-18T11:20:00+00:00 is more than 10 minutes in the future"),
])
def test_reasons(validator, change, reason):
    event = dict(RECEIVED)
    for key, value in change.items():
        if value is None:
            event.pop(key)
        else:
            event[key] = value
    assert reasons(validator, event) == [reason]


def test_not_json(validator):
    assert reasons(validator, b"nope {") == ["record is not valid JSON: JSON is malformed: invalid character (byte 4)"]
    assert reasons(validator, b"\xff\x00") == ["record is not UTF-8 text (byte 0)"]
    # The content of a record that is not an event is never repeated: it may hold a personal identifier.
    assert reasons(validator, b'"012345678901"') == ["record is a JSON string, not an event object or an array of events"]


def test_one_bad_item_rejects_that_item_only(validator):
    bad = dict(RECEIVED, event_id="e-2", channel="fax")
    unknown = dict(RECEIVED, event_id="e-3", province="00")
    decoded = validator.decode(encode([RECEIVED, bad, 7, unknown]), NOW_MS)
    assert [e.event_id for e in decoded.events] == ["e-1"]
    assert [(r.item_index, r.reason) for r in decoded.rejections] == [
        (1, "field 'channel': expected one of online, in_person, postal, got \"fax\""),
        (2, "item is a JSON number, not an event object"),
        (3, "field 'province': unknown province code '00'"),
    ]
    # The original bytes of each rejected item travel with it.
    assert json.loads(decoded.rejections[0].original) == bad
    assert decoded.rejections[1].original == b"7"
    assert json.loads(decoded.rejections[2].original) == unknown


@pytest.mark.parametrize("key", [b"k1", b"a longer secret key", b"x" * 100])
def test_pseudonyms_are_hmac_sha256(key):
    assert Pseudonymiser(key)("CCCD001") == hmac.new(key, b"CCCD001", hashlib.sha256).hexdigest()
    assert Pseudonymiser(key)("CCCD001") != Pseudonymiser(key + b"!")("CCCD001")
