"""What a rejection keeps: a dead letter on Kafka, a row in ClickHouse.

The dead letter (`<prefix>.dead-letter`, CONTRACT §1) carries the original
bytes, so that a fixed event can be re-sent; it lives on Kafka beside the
source topics, which hold the same bytes. Its readers should be the people
allowed to read the source topics (README, "Rejected input").

The row in `rejected_events` is for the boards and for finding what went
wrong, and ClickHouse keeps no personal identifier in clear: of an event
object it keeps the contract's fields, personal ones replaced by their
pseudonym and long values shortened; of anything else (not JSON, not an
object) only the length and a keyed digest. A digest without a key could be
reversed by trying every citizen id number; the keyed one can only be
matched by whoever holds the pseudonym key.
"""

from __future__ import annotations

import base64
import hashlib

import msgspec

from .events import EVENT_TYPES, MAX_DEPTH, PERSONAL_FIELDS, Pseudonymiser
from .json_structure import depth_bound, scan

# A dead letter stays under Kafka's default message.max.bytes (1,048,588) with room for its fields.
MAX_LETTER_BYTES = 1_000_000
HEAD_BYTES = 4096  # of an original too big to travel whole, the first bytes kept (base64)
VALUE_CHARS = 256  # a stored field value longer than this is shortened

CONTRACT_FIELDS = frozenset(
    {"event_type"} | {name for cls in EVENT_TYPES.values() for name in cls.__struct_fields__}
)
_ANY = msgspec.json.Decoder()


def dead_letter(reason: str, topic: str, partition: int, offset: int, item_index: int | None,
                record_ms: int, original: bytes) -> bytes:
    """The dead letter's JSON. The original travels as text, as base64 when it is not UTF-8 or
    when that is shorter (control characters escape to six bytes each), and when even that is
    over the limit, as its first bytes, length and SHA-256: the whole record stays at its source
    offset for the source topic's retention."""
    letter = {
        "reason": reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "item_index": item_index,
        "record_timestamp_ms": record_ms,
    }
    try:
        letter["original"] = original.decode("utf-8")
        encoded = msgspec.json.encode(letter)
        if len(encoded) <= MAX_LETTER_BYTES:
            return encoded
    except UnicodeDecodeError:
        pass
    letter["original"] = None
    if 4 * (len(original) + 2) // 3 <= MAX_LETTER_BYTES - 2048:
        letter["original_base64"] = base64.b64encode(original).decode()
    else:
        letter["original_truncated"] = True
        letter["original_bytes"] = len(original)
        letter["original_sha256"] = hashlib.sha256(original).hexdigest()
        letter["original_head_base64"] = base64.b64encode(original[:HEAD_BYTES]).decode()
    return msgspec.json.encode(letter)


def stored_original(original: bytes, pseudonymise: Pseudonymiser) -> str:
    """What rejected_events keeps of a rejected record or item (see the module docstring):
    the redacted event object as JSON, or "" when the original is not an event object."""
    if depth_bound(original) > MAX_DEPTH and scan(original).depth > MAX_DEPTH:
        return ""
    try:
        document = _ANY.decode(original)
    except (msgspec.DecodeError, RecursionError):
        return ""
    if type(document) is not dict:
        return ""
    kept = {}
    for name, value in document.items():
        if name not in CONTRACT_FIELDS:
            continue
        if name in PERSONAL_FIELDS:
            kept[name] = "pseudonym:" + pseudonymise(value if type(value) is str else msgspec.json.encode(value).decode())
        elif type(value) is str:
            kept[name] = value if len(value) <= VALUE_CHARS else value[:VALUE_CHARS] + "…"
        elif type(value) in (dict, list):
            kept[name] = f"({'an object' if type(value) is dict else 'an array'}, not kept)"
        else:
            kept[name] = value
    return msgspec.json.encode(kept).decode()


def personal_values(value: bytes | None) -> list[str]:
    """The personal fields' values in a record (an event or a batch), as text: what a message
    about the record must not repeat."""
    if not value or (depth_bound(value) > MAX_DEPTH and scan(value).depth > MAX_DEPTH):
        return []
    try:
        document = _ANY.decode(value)
    except (msgspec.DecodeError, RecursionError):
        return []
    found = []
    for item in document if type(document) is list else [document]:
        if type(item) is dict:
            for name in PERSONAL_FIELDS:
                if name in item and item[name] is not None:
                    found.append(item[name] if type(item[name]) is str else msgspec.json.encode(item[name]).decode())
    return found


def scrub_personal(message: str, value: bytes | None) -> str:
    """`message` with every personal value of the record replaced by a placeholder."""
    for secret in sorted(personal_values(value), key=len, reverse=True):
        if secret:
            message = message.replace(secret, "(personal identifier)")
    return message
