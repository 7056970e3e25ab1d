"""Who a request is for, as its client says: the OpenAI `user` field, recorded in analytics.

Teams put one llmp key in an application and name the application's own user in each request
(`"user": "alice@example.com"`, a hash, a session id), as OpenAI asks them to. The proxy records
it beside the key, so that analytics can tell that key's traffic apart; it is never an access
decision and never logged.

Only the top-level member counts (a `metadata.user` is not the request's user). It is read from
the document the routing parsed for the model (`body.RequestBody`: the body is parsed once). At
most MAX_USER characters are kept: a field an outsider fills must not grow the database without
bound.
"""

from __future__ import annotations

from services.proxy.body import RequestBody

MAX_USER = 256


def end_user(content_type: str, body: RequestBody) -> str | None:
    """The top-level `user` member of a JSON request, if a string (cut to MAX_USER)."""
    if "json" not in content_type and (content_type or body.raw[:1] != b"{"):
        return None
    members = body.members
    user = members.get("user") if members is not None else None
    if not isinstance(user, str) or not user:
        return None
    return user[:MAX_USER]
