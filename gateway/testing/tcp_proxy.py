"""A TCP forwarder that tests can cut, black-hole and restore, to make PostgreSQL (or anything)
vanish: refused and reset (`cut`), or silent, as in a network partition (`black_hole`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class TcpProxy:
    """Listens on 127.0.0.1:<port> and forwards to a TCP address or a Unix socket path."""

    def __init__(self, *, host: str | None = None, port: int | None = None,
                 unix_path: str | None = None) -> None:
        self._target = (host, port, unix_path)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._holed = False
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port or self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every open connection (the peer sees a reset)."""
        self._holed = False
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_connections()

    async def black_hole(self) -> None:
        """A partition: connections stay open and new ones are accepted, but nothing gets
        through either way (bytes are dropped; no reset, no FIN), so peers wait."""
        self._holed = True

    async def restore(self) -> None:
        """Forward again. Connections that lived through a black hole lost bytes, so they are
        reset (as a NAT or keepalive would after a long partition); new ones go through."""
        if self._holed:
            self._holed = False
            self._drop_connections()
        if self._server is None:
            await self.start(self.port)

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        self._writers.clear()

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._holed:  # accepted, then never answered
            self._writers.add(writer)
            self._track(self._swallow(reader, writer))
            return
        host, port, unix_path = self._target
        try:
            if unix_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            self._track(self._pipe(src, dst))

    async def _swallow(self, src: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await src.read(65536):
                pass
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if not self._holed:  # a partition drops what is in flight
                    dst.write(data)
                    await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(dst)
            with contextlib.suppress(Exception):
                dst.close()
