"""How uvicorn serves the proxy: its httptools protocol, with the writes of one pass of the event
loop gathered into one.

uvicorn writes a response's head as soon as the app starts it, and each part of the body as it
comes: one socket write each, so a short answer costs two system calls where one would do (the
proxy spent a third of its time in socket writes). `GatheringTransport` keeps what is written
during one pass of the event loop and writes it, joined, at the end of that pass: the same bytes
in the same order, at most one loop iteration later. (Writing a head and its body as soon as
the body comes, instead, measured 10-20% fewer requests a second under load, for 0.1 ms less
at one client.) Everything else goes to the real transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GatheringTransport:
    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gathering = GatheringTransport(transport, asyncio.get_running_loop())
        super().connection_made(gathering)  # type: ignore[arg-type]
