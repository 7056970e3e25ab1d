"""Who a request is for, as its client says: the OpenAI `user` field, recorded in analytics.

Teams put one llmp key in an application and name the application's own user in each request
(`"user": "alice@example.com"`, a hash, a session id), as OpenAI asks them to. The proxy records
it beside the key, so that analytics can tell that key's traffic apart; it is never an access
decision and never logged.

Read as cheaply as the model (`routing.request_model`): a JSON body holding exactly one string
member named "user" gives it as it is; one that holds several is parsed in full and only the
top-level member counts. At most MAX_USER characters are kept: a field an outsider fills must
not grow the database without bound.
"""

from __future__ import annotations

import json
import re

MAX_USER = 256
_JSON_USER = re.compile(rb'"user"\s*:\s*"([^"\\]*)"')


def end_user(content_type: str, body: bytes) -> str | None:
    """The `user` a JSON request names, if any (cut to MAX_USER characters)."""
    json_body = "json" in content_type or (not content_type and body[:1] == b"{")
    if not json_body or b'"user"' not in body:
        return None
    found: list[bytes] = _JSON_USER.findall(body)
    if len(found) == 1:
        user: object = found[0].decode(errors="replace")
    else:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):  # the upstream will say what is wrong with it
            return None
        user = document.get("user") if isinstance(document, dict) else None
    if not isinstance(user, str) or not user:
        return None
    return user[:MAX_USER]
