"""protocol.client against a fake helper: replies split anywhere, malformed streams,
deadlines and cancellation. No connection that may still receive a reply is ever reused.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol import framing, ops
from protocol.client import TICK, HelperClient
from protocol.errors import LwpError

ENVELOPE = ops.Envelope("req-1", None, "local", ops.ListContainers())
RESULT = [{"container": f"c{i}", "state": "stopped"} for i in range(50)]
REPLY = framing.encode_frame({"ok": True, "result": RESULT}, framing.MAX_REPLY)


class FakeHelper:
    """Answers every request with `pieces`, sent one by one `pause` apart (None: hangs up
    instead), read anew for every request; sees each connection end (at EOF)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pieces: tuple[bytes, ...] | None = (REPLY,)
        self.pause = 0.0
        self.hang_up_after_reply = False
        self.readers: list[asyncio.StreamReader] = []
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return len(self.readers)

    def ended(self) -> int:
        return sum(reader.at_eof() for reader in self.readers)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.readers.append(reader)
        try:
            while await self.serve_one(reader, writer):
                pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def serve_one(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        try:
            header = await reader.readexactly(framing.HEADER.size)
            await reader.readexactly(framing.body_length(header))
        except asyncio.IncompleteReadError:
            return False  # the client hung up
        if self.pieces is None:
            return False
        try:
            for piece in self.pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(self.pause)
        except ConnectionError:
            return False  # the client gave up on this reply (a deadline, a cancel)
        return not self.hang_up_after_reply


@pytest.fixture
async def helper(tmp_path: Path) -> AsyncIterator[FakeHelper]:
    fake = FakeHelper(str(tmp_path / "helper.sock"))
    server = await asyncio.start_unix_server(fake.handle, fake.path)
    try:
        yield fake
    finally:
        server.close()
        for task in list(fake.tasks):
            task.cancel()
        await asyncio.gather(*fake.tasks, return_exceptions=True)
        await server.wait_closed()


async def closed(helper: FakeHelper, count: int) -> None:
    """Wait (briefly: far less than any reply's pause) until `count` connections ended."""
    for _ in range(100):
        if helper.ended() >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{helper.ended()} connections ended, expected {count}")


async def test_calls_in_turn_share_one_pooled_connection(helper: FakeHelper) -> None:
    client = HelperClient(helper.path)
    for _ in range(3):
        assert await client.call(ENVELOPE) == RESULT
    assert helper.connections == 1
    await client.close()
    await closed(helper, 1)


@pytest.mark.parametrize("cut", [1, 3, 4, 5, len(REPLY) - 1])
async def test_a_reply_split_anywhere_is_read_whole(helper: FakeHelper, cut: int) -> None:
    helper.pieces, helper.pause = (REPLY[:cut], REPLY[cut:]), 0.01
    client = HelperClient(helper.path)
    assert await client.call(ENVELOPE) == RESULT
    assert await client.call(ENVELOPE) == RESULT
    assert helper.connections == 1
    await client.close()


async def test_a_reply_byte_by_byte_is_read_whole(helper: FakeHelper) -> None:
    helper.pieces = tuple(REPLY[i:i + 1] for i in range(len(REPLY)))
    client = HelperClient(helper.path)
    assert await client.call(ENVELOPE) == RESULT
    await client.close()


@pytest.mark.parametrize(("pieces", "code", "connections"), [
    ((framing.HEADER.pack(framing.MAX_REPLY + 1),), "payload-too-large", 2),
    ((framing.HEADER.pack(0),), "protocol-error", 2),
    ((REPLY + REPLY,), "protocol-error", 2),
    # A whole frame whose content is wrong: the stream itself is still in step.
    ((framing.encode_frame({"ok": "yes"}),), "protocol-error", 1),
])
async def test_a_malformed_reply_is_refused_and_a_stream_out_of_step_dropped(
        helper: FakeHelper, pieces: tuple[bytes, ...], code: str, connections: int) -> None:
    helper.pieces = pieces
    client = HelperClient(helper.path)
    with pytest.raises(LwpError) as caught:
        await client.call(ENVELOPE)
    assert caught.value.code == code
    await closed(helper, connections - 1)
    helper.pieces, helper.pause = (REPLY,), 0.0
    assert await client.call(ENVELOPE) == RESULT
    assert helper.connections == connections
    await client.close()


async def test_a_helper_that_hangs_up_gives_helper_unavailable(helper: FakeHelper) -> None:
    helper.pieces = None
    client = HelperClient(helper.path)
    with pytest.raises(LwpError) as caught:
        await client.call(ENVELOPE)
    assert caught.value.code == "helper-unavailable"
    await client.close()


async def test_no_helper_gives_helper_unavailable(tmp_path: Path) -> None:
    client = HelperClient(str(tmp_path / "nobody.sock"))
    with pytest.raises(LwpError) as caught:
        await client.call(ENVELOPE)
    assert caught.value.code == "helper-unavailable"


async def test_a_missed_deadline_is_a_timeout_and_the_late_reply_finds_no_one(
        helper: FakeHelper) -> None:
    helper.pieces, helper.pause = (REPLY[:2], REPLY[2:]), 5.0
    client = HelperClient(helper.path)
    with pytest.raises(LwpError) as caught:
        await client.call(ENVELOPE, timeout=0.1)
    assert caught.value.code == "timeout"
    await closed(helper, 1)  # the timed-out connection was closed, not pooled
    helper.pieces, helper.pause = (REPLY,), 0.0
    assert await client.call(ENVELOPE) == RESULT
    assert helper.connections == 2
    await client.close()


async def test_a_deadline_is_kept_to_within_a_tick_and_the_sweep_stops_when_idle(
        helper: FakeHelper) -> None:
    helper.pieces, helper.pause = (REPLY[:2], REPLY[2:]), 5.0
    client = HelperClient(helper.path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(LwpError, match="list_containers did not finish within 0.2 s"):
        await client.call(ENVELOPE, timeout=0.2)
    assert 0.2 <= loop.time() - started < 0.2 + TICK + 0.1
    await asyncio.sleep(2 * TICK)
    assert client._sweeper is None  # noqa: SLF001 — nothing left to watch, nothing scheduled
    await client.close()


async def test_a_cancelled_caller_leaves_no_connection_behind(helper: FakeHelper) -> None:
    helper.pieces, helper.pause = (REPLY[:2], REPLY[2:]), 5.0
    client = HelperClient(helper.path)
    task = asyncio.create_task(client.call(ENVELOPE))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await closed(helper, 1)  # closed at once: its reply could never be matched again
    helper.pieces, helper.pause = (REPLY,), 0.0
    assert await client.call(ENVELOPE) == RESULT
    assert helper.connections == 2
    await client.close()


async def test_a_pooled_connection_the_helper_hung_up_on_is_not_reused(
        helper: FakeHelper) -> None:
    helper.hang_up_after_reply = True  # as a helper that restarts between two requests
    client = HelperClient(helper.path)
    assert await client.call(ENVELOPE) == RESULT
    await closed(helper, 1)
    await asyncio.sleep(0.01)  # its EOF reaches the client's loop
    assert await client.call(ENVELOPE) == RESULT
    assert helper.connections == 2
    await client.close()
