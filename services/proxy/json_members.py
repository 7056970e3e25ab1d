"""The top-level members of a JSON object, each with where it lies in the text.

`members(text)` walks one object with the standard library's own JSON scanner, so each member's
value is parsed by the real parser and its span is exact: a member can then be removed, or copied
into another object, leaving every other byte as the sender wrote it. Anything that is not one
JSON object, or that names a member twice, is refused (None): it is not ours to rewrite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    start: int  # the opening quote of its name
    end: int  # just past its value
    value: Any


def members(text: str) -> dict[str, Member] | None:
    """The members of the object `text` holds, in order, by name; None if it is not exactly
    one JSON object with distinct names."""
    try:
        return _walk(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None


def _skip(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _walk(text: str) -> dict[str, Member] | None:
    at = _skip(text, 0)
    if text[at : at + 1] != "{":
        return None
    at = _skip(text, at + 1)
    found: dict[str, Member] = {}
    if text[at : at + 1] == "}":
        return found if _skip(text, at + 1) == len(text) else None
    while True:
        if text[at : at + 1] != '"':
            return None
        name, after = _DECODER.raw_decode(text, at)
        after = _skip(text, after)
        if text[after : after + 1] != ":" or name in found:
            return None
        value, end = _DECODER.raw_decode(text, _skip(text, after + 1))
        found[name] = Member(name, at, end, value)
        at = _skip(text, end)
        if text[at : at + 1] == ",":
            at = _skip(text, at + 1)
            continue
        return found if text[at : at + 1] == "}" and _skip(text, at + 1) == len(text) else None


def without(text: str, found: dict[str, Member], name: str) -> str:
    """`text` without its member `name` (and the comma that joined it to a neighbour)."""
    order = list(found.values())
    index = next(i for i, m in enumerate(order) if m.name == name)
    member = order[index]
    if index + 1 < len(order):  # up to the next member's name
        return text[: member.start] + text[order[index + 1].start :]
    if index > 0:  # from the end of the previous member's value
        return text[: order[index - 1].end] + text[member.end :]
    return text[: member.start] + text[member.end :]


def appended(text: str, additions: list[str]) -> str:
    """`text` (one JSON object with at least one member, and maybe white space around it)
    with the member texts `additions` added at its end, joined as a compact serializer joins
    them."""
    close = text.rindex("}")
    return text[:close] + "".join("," + a for a in additions) + text[close:]
