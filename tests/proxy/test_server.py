"""The proxy's uvicorn protocol gathers the writes of one loop pass into one."""

import asyncio

from services.proxy.server import GatheringTransport


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_pass_go_out_as_one_in_order_and_close_sends_what_waits():
    async def scenario():
        real = Recording()
        gathering = GatheringTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        gathering.write(b"HTTP/1.1 200 OK\r\n\r\n")
        gathering.write(b"")
        gathering.write(b"body")
        assert real.writes == []  # not before the end of this pass
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        gathering.write(b"more")
        await asyncio.sleep(0)
        gathering.write(b"last")
        gathering.close()
        assert real.writes[1:] == [b"more", b"last"] and real.closed
        assert gathering.get_extra_info("peername") == "info:peername"

    asyncio.run(scenario())
