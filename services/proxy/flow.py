"""One request on its way through the proxy: what each step needs going down, and what it found
coming back up.

Going down (`ProxyApp.route`, `forward.exchange`, `forward.relay`): the ASGI scope, the key's
policy, the body (parsed at most once), the `send` of the answer (which knows whether the
answer has started), when the request started (`time.perf_counter()`) and the limiter's
admission, whose `x-ratelimit-*` headers go out with the answer.

Coming back up: the analytics row is the outcome (status, timings, bytes, the upstream's usage,
filled in once as the answer passes), and `meter` is what read the usage, for the estimate of
an answer that gave none. `tokens_used()` is what the request costs its key, read from both.
Nothing is returned up the stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.proxy.asgi import Response
from services.proxy.body import RequestBody
from services.proxy.limits import Admission, Policy
from services.proxy.usage import Meter, tokens_used
from shared.analytics import RequestRow


@dataclass(slots=True, eq=False)
class Flow:
    scope: dict[str, Any]
    policy: Policy
    body: RequestBody
    content_type: str
    row: RequestRow
    send: Response
    started: float  # time.perf_counter() when the request came in
    admission: Admission | None = None  # set once the key's limits let the request through
    meter: Meter | None = None  # set by the relay of the answer the client gets
    # The client has the stream's last event, `data: [DONE]`: a client that leaves now (as
    # openai-python does, before the upstream has ended the body) got the whole answer.
    delivered: bool = False

    @property
    def path(self) -> str:
        path: str = self.scope["path"]
        return path

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def limit_headers(self) -> Sequence[tuple[bytes, bytes]]:
        """The key's `x-ratelimit-*` headers, for the answer."""
        return () if self.admission is None else self.admission.headers

    def tokens_used(self) -> int:
        return tokens_used(self.row, self.meter)
