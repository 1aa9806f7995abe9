"""Messages of the alerts topic, `<prefix>.alerts` (README "Dossier lifecycle and overdue alerts").

The worker writes one message per state of an alert, `opscentre alerts forward` reads them. Key:
`alert_id` (UTF-8); partition: the source partition (mod the topic's partitions), so all of one
alert's messages are in one partition, in order: firing first, then its resolution. A message may
come more than once (the worker is at-least-once on this topic); a repeat has the same content.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import msgspec

FIRING, RESOLVED = "firing", "resolved"

Timestamp = Annotated[datetime.datetime, msgspec.Meta(tz=True)]  # RFC 3339 with an offset


class AlertMessage(msgspec.Struct):
    alert_id: str
    type: str  # dossier.overdue, feedback.overdue; security.* to come
    province: str
    agency: str
    item_ref: str  # the item's HMAC-SHA256 pseudonym: the dossier or feedback id never appears
    detected_at: Timestamp | None = None  # the watermark that passed the due time; required when firing
    procedure_code: str | None = None
    due_at: Timestamp | None = None
    replayed: bool = False  # raised again by `opscentre replay`: never pages
    # Messages written before resolutions existed have no status: they are firing.
    status: Literal["firing", "resolved"] = FIRING
    resolved_at: Timestamp | None = None  # the completion or cancellation time; required when resolved
    # `source` {partition, offset} and any other field are ignored.


_decoder = msgspec.json.Decoder(AlertMessage)


class BadAlertMessage(ValueError):
    """A record of the alerts topic that is not an alert message."""


def decode_alert(value: bytes | None) -> AlertMessage:
    try:
        message = _decoder.decode(value or b"")
    except msgspec.DecodeError as exc:  # ValidationError included
        raise BadAlertMessage(str(exc)) from None
    if message.status == FIRING and message.detected_at is None:
        raise BadAlertMessage("a firing alert needs `detected_at`")
    if message.status == RESOLVED and message.resolved_at is None:
        raise BadAlertMessage("a resolution needs `resolved_at`")
    return message
