"""Spreading connections evenly over the pre-forked workers.

All workers accept from one inherited listening socket. uvloop (libuv) drains the whole accept
queue on each wake-up, so when clients open their keep-alive connections together (a checkout
backend's pool at start-up, a load balancer after a restart), the first worker to wake takes
all or most of them and serves them for their whole life while its sibling idles: measured
with wrk, 16 connections split 10:6 and 4 connections 4:0, at 766 req/s instead of ~1,000-1,100
for an even split. A worker's share is what bounds throughput and tail latency on a busy box.

So each worker accepts one connection at a time, and before each accept it compares the
number of connections it serves with its live siblings' (a few shared integers, set up by
the master before it forks). A worker serving more than the least loaded sibling lets the
accept pass for up to ACCEPT_DEFER_MAX_S, so the sibling, which is woken by the same
connection, takes it. If the sibling does not (it is stuck, or busy for longer), this worker
accepts anyway: a connection waits at most that long, and is never left unaccepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import socket
from collections.abc import Callable
from typing import Any, Final

import structlog
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]  # no type hints shipped
from uvicorn import Server
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]  # no type hints shipped

log = structlog.get_logger(__name__)

ACCEPT_DEFER_MAX_S: Final = 0.05
"""Longest a pending connection waits for a less loaded sibling to take it."""

ACCEPT_DEFER_STEP_S: Final = 0.001

ACCEPT_RETRY_S: Final = 0.1
"""Pause after a failed accept (out of file descriptors, say), as asyncio's own accept loop does."""

GATE_SLOTS: Final = 64
"""Worker slots in the shared table; a roll briefly runs one worker more than configured."""

PUBLISH_INTERVAL_S: Final = 0.1
"""How often a worker refreshes its connection count in the table besides at every accept
(connections also close between accepts)."""


class AcceptGate:
    """The shared table of (worker pid, open connections); created in the master before forking."""

    def __init__(self, slots: int = GATE_SLOTS) -> None:
        self._table = multiprocessing.RawArray(ctypes.c_long, 2 * slots)  # pid, count; 0 = free
        self._lock = multiprocessing.Lock()
        self._slots = slots
        self._mine: int | None = None

    def join(self) -> None:
        """Claim a slot for this process (a free one, or one a dead worker left behind)."""
        me = os.getpid()
        with self._lock:
            for slot in range(self._slots):
                pid = self._table[2 * slot]
                if pid == 0 or pid == me or not _alive(pid):
                    self._table[2 * slot], self._table[2 * slot + 1] = me, 0
                    self._mine = slot
                    return
        self._mine = None  # table full: this worker accepts without deferring

    def leave(self) -> None:
        """Give the slot up: a worker that stops accepting must not be waited for."""
        if self._mine is not None:
            with self._lock:
                if self._table[2 * self._mine] == os.getpid():
                    self._table[2 * self._mine], self._table[2 * self._mine + 1] = 0, 0
            self._mine = None

    def publish(self, connections: int) -> None:
        if self._mine is not None:
            self._table[2 * self._mine + 1] = connections

    def least_loaded_sibling(self) -> int | None:
        """The fewest connections a live sibling serves (None without siblings)."""
        fewest: int | None = None
        for slot in range(self._slots):
            pid = self._table[2 * slot]
            if pid == 0 or slot == self._mine:
                continue
            count = self._table[2 * slot + 1]
            if (fewest is None or count < fewest) and _alive(pid):
                fewest = count
        return fewest

    async def turn(self, connections: Callable[[], int]) -> None:
        """Return when this worker should accept the pending connection."""
        # A deadline on the loop's clock, not a count of steps: on a busy loop each sleep
        # lasts longer than asked, and the bound is what the module promises.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACCEPT_DEFER_MAX_S
        while loop.time() < deadline:
            mine = connections()
            self.publish(mine)
            fewest = self.least_loaded_sibling()
            if fewest is None or mine <= fewest:
                return
            await asyncio.sleep(ACCEPT_DEFER_STEP_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover  # alive, another user's (a reused pid)
        return True
    return True


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class BalancedServer(Server):
    """uvicorn's server with the accept loop of this module instead of `loop.create_server`."""

    def __init__(self, config: Any, gate: AcceptGate) -> None:
        super().__init__(config)
        self._gate = gate
        self._accepting: list[asyncio.Task[None]] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # lifespan and state; no listener of uvicorn's own
        loop = asyncio.get_running_loop()
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]  # uvicorn's protocols take these
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        self._gate.join()
        self._accepting = [loop.create_task(self._accept(loop, sock, protocol)) for sock in sockets or []]
        self._accepting.append(loop.create_task(self._publish()))

    async def _accept(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Callable[[], asyncio.Protocol]
    ) -> None:
        sock.setblocking(False)
        while True:
            await _readable(loop, sock.fileno())
            await self._gate.turn(lambda: len(self.server_state.connections))
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # a sibling took it
            except OSError:  # out of descriptors, say: as asyncio's own accept loop, retry soon
                log.warning("accept_failed", exc_info=True)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            try:
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.connect_accepted_socket(protocol, conn)
            except Exception:
                # This loop is the worker's only way in: whatever one connection does, the
                # loop goes on (a dead loop would leave a worker that heartbeats but serves no one).
                log.warning("connection_setup_failed", exc_info=True)
                conn.close()
            self._gate.publish(len(self.server_state.connections))

    async def _publish(self) -> None:
        while True:
            self._gate.publish(len(self.server_state.connections))
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._gate.leave()
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        await super().shutdown(sockets=sockets)


class BalancedWorker(UvicornWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's uvicorn worker serving through `BalancedServer`; `gate` is set before forking."""

    gate: AcceptGate | None = None

    async def _serve(self) -> None:
        if self.gate is None or self.config.is_ssl:  # not through `escrow.api.prefork.serve`, or TLS
            await super()._serve()
            return
        self.config.app = self.wsgi
        server = BalancedServer(self.config, self.gate)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR)  # as the base worker does
