"""The bracket structure of a JSON text, found without a recursive parser.

Parsers recurse once per nesting level: msgspec raises RecursionError a few
hundred levels down, and one record like that used to crash the worker. This
module finds, with a few vectorised passes over the bytes, how deep a text
nests and where the items of a top-level array begin and end, so that a deep
item can be rejected by itself and the others decoded one by one. It checks
no more of JSON than brackets, commas and strings: each item it returns is
still decoded (and validated) by msgspec.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPENS = np.zeros(256, dtype=np.int8)
_OPENS[[ord("["), ord("{")]] = 1
_OPENS[[ord("]"), ord("}")]] = -1
_SPACE = b" \t\r\n"


class Structure(NamedTuple):
    depth: int  # deepest nesting of the whole text (a scalar: 0, `[]` or `{}`: 1)
    balanced: bool  # brackets close in order outside strings, and nothing follows the outermost value
    top: str  # first character that is not white space ("" for an empty text)
    items: list  # (start, end, depth) of each item of a balanced top-level array, depth within the item
    item_count: int  # items of a balanced top-level array (`items` is left empty past `max_items`)


def depth_bound(value: bytes) -> int:
    """An upper bound on how deep `value` nests, at C speed: the number of opening brackets."""
    return value.count(b"[") + value.count(b"{")


def scan(value: bytes, max_items: int | None = None) -> Structure:
    data = np.frombuffer(value, dtype=np.uint8)
    stripped = value.strip(_SPACE)
    top = chr(stripped[0]) if stripped else ""
    if not len(data):
        return Structure(0, False, top, [], 0)
    quotes = np.flatnonzero(data == _QUOTE)
    backslash = data == _BACKSLASH
    if len(quotes) and backslash.any():
        # A quote is escaped when an odd number of backslashes stands right before it.
        positions = np.arange(len(data))
        last_plain = np.maximum.accumulate(np.where(backslash, -1, positions))
        before = quotes - 1
        run = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)
        quotes = quotes[run % 2 == 0]
    toggles = np.zeros(len(data), dtype=np.int8)
    toggles[quotes] = 1
    outside = (np.cumsum(toggles, dtype=np.int64) & 1) == 0  # a closing quote counts as outside
    steps = _OPENS[data] * outside
    depth = np.cumsum(steps, dtype=np.int32)
    deepest = int(depth.max(initial=0))
    ends_at_zero = int(depth[-1]) == 0 and int(depth.min(initial=0)) >= 0
    balanced = ends_at_zero and deepest > 0 and _one_value(depth, data, outside)
    items: list = []
    count = 0
    if balanced and top == "[":
        items, count = _array_items(data, depth, outside, max_items)
    return Structure(deepest, balanced, top, items, count)


def _one_value(depth: np.ndarray, data: np.ndarray, outside: np.ndarray) -> bool:
    """Nothing but white space around the outermost brackets."""
    closes = np.flatnonzero((depth == 0) & outside & (_OPENS[data] == -1))
    if not len(closes):
        return False
    opens = np.flatnonzero((depth == 1) & (_OPENS[data] == 1) & outside)
    first, last = int(opens[0]), int(closes[-1])
    return not bytes(data[:first]).strip(_SPACE) and not bytes(data[last + 1:]).strip(_SPACE) and len(closes) == 1


def _array_items(data: np.ndarray, depth: np.ndarray, outside: np.ndarray, max_items: int | None) -> tuple:
    opening = int(np.argmax((depth == 1) & outside))
    commas = np.flatnonzero((data == _COMMA) & outside & (depth == 1))
    closing = len(data) - 1 - int(np.argmax(((depth == 0) & outside & (_OPENS[data] == -1))[::-1]))
    if not len(commas) and not bytes(data[opening + 1:closing]).strip(_SPACE):
        return [], 0  # `[]`
    count = len(commas) + 1
    if max_items is not None and count > max_items:
        return [], count
    starts = np.concatenate(([opening], commas)) + 1
    ends = np.concatenate((commas, [closing]))
    # depth[i] is the depth after byte i: inside the array it is 1 plus the item's own nesting.
    inner = np.maximum.reduceat(depth, starts) if len(depth) else starts
    empty = ends <= starts  # `[1,,2]`: an empty item, whose reduceat value is meaningless
    inner = np.where(empty, 1, inner) - 1
    return list(zip(starts.tolist(), ends.tolist(), np.maximum(inner, 0).tolist())), count
