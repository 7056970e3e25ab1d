"""What nginx proves to the api about a request: that the client address it names is real.

The api listens on loopback, where any local process may connect and claim any
`X-Real-IP`. nginx adds `X-Llmp-Forwarded`, a value derived from JWT_SECRET (which a process
able to read it could use to sign admin sessions anyway), to every request it passes on; the
api believes `X-Real-IP` only next to that value, and otherwise counts the connection's own
peer address. The proxy does not pass the header on to upstreams.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Llmp-Forwarded"


def proof(secret: str) -> str:
    return hmac.new(secret.encode(), b"llmp: passed on by nginx", hashlib.sha256).hexdigest()


def client_address(peer: str | None, real_ip: str | None, given: str | None, secret: str) -> str:
    """The client's address: nginx's `X-Real-IP` when `given` is nginx's proof, else the
    connection's peer."""
    if real_ip and given and hmac.compare_digest(given.encode(), proof(secret).encode()):
        return real_ip.strip()
    return peer or "unknown"
