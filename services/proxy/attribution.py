"""Who a request is for, as its client says: the OpenAI `user` field, recorded in analytics.

Teams put one llmp key in an application and name the application's own user in each request
(`"user": "alice@example.com"`, a hash, a session id), as OpenAI asks them to. The proxy records
it beside the key, so that analytics can tell that key's traffic apart; it is never an access
decision and never logged.

Only the top-level member counts (a `metadata.user` is not the request's user). A body whose
text holds no string member named "user" costs one search; one that does is parsed with orjson,
as the routing parses it for its model (the standard parser decides what orjson refuses). At
most MAX_USER characters are kept: a field an outsider fills must not grow the database without
bound.
"""

from __future__ import annotations

import json
import re

import orjson

MAX_USER = 256
_JSON_USER = re.compile(rb'"user"\s*:\s*"')


def end_user(content_type: str, body: bytes) -> str | None:
    """The top-level `user` member of a JSON request, if a string (cut to MAX_USER)."""
    json_body = "json" in content_type or (not content_type and body[:1] == b"{")
    if not json_body or not _JSON_USER.search(body):
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):  # the upstream will say what is wrong with it
            return None
    user = document.get("user") if isinstance(document, dict) else None
    if not isinstance(user, str) or not user:
        return None
    return user[:MAX_USER]
