"""`gateway serve --workers N`: N processes serving one port, so every core does the work.

Each worker binds the port with SO_REUSEPORT (the kernel spreads new connections over them)
and is a whole gateway: its own pool, ledger writer, caches and leases. Budgets, rate limits
and idempotency stay exact across workers for the same reason they stay exact across
replicas; only the `memory` rate-limit backend is per process, so several workers with it
are refused unless `ratelimit.per_process_limits` says that is what is wanted.

The parent only supervises: it starts the embedded PostgreSQL when no database URL is set
(the workers share it), forwards SIGTERM and SIGINT, restarts a worker that dies on its
own, and gives up (exit 1) when one keeps dying as soon as it starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import ForkProcess
from types import FrameType

import structlog

from gateway.db import EmbeddedPostgres
from gateway.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

QUICK_DEATH_S = 5.0  # a worker that dies sooner than this after its start...
MAX_QUICK_DEATHS = 3  # ...this many times in a row stops the whole server
STOP_GRACE_S = 10.0  # after the workers' own shutdown deadline: then SIGKILL
PR_SET_PDEATHSIG = 1  # prctl(2)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(requested: int | None, settings: Settings, *, demo: bool = False) -> int:
    """How many workers to run: `requested`, else one per core where the limits are shared
    (one with the `memory` backend or in demo mode). Refuses what would be wrong."""
    per_process = settings.ratelimit.backend == "memory"
    if requested is None:
        return 1 if per_process or demo else cores()
    if requested < 1:
        raise SettingsError(f"--workers must be 1 or more, not {requested}")
    if requested > 1 and demo:
        raise SettingsError("--demo runs one worker (its fake provider and key are per "
                            "process); leave out --workers")
    if requested > 1 and per_process and not settings.ratelimit.per_process_limits:
        raise SettingsError(
            f"--workers {requested} with the memory rate-limit backend would give each worker "
            "its own rate limits and idempotency claims: set ratelimit.backend to redis, "
            "upstash or postgres, or ratelimit.per_process_limits = true (env "
            "GATEWAY_RATELIMIT_PER_PROCESS_LIMITS=true) to accept "
            "per-process limits")
    return requested


def free_port(host: str) -> tuple[socket.socket, int]:
    """A port for every worker to share, held (bound with SO_REUSEPORT, not listening) by
    the parent so that nothing else takes it meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, 0))
    return holder, holder.getsockname()[1]


class Supervisor:
    """Runs `count` forked workers, each calling `serve(settings, index)`, until a signal."""

    def __init__(self, settings: Settings, count: int,
                 serve: Callable[[Settings, int], None]) -> None:
        self._settings = settings
        self._count = count
        self._serve = serve
        self._context = multiprocessing.get_context("fork")
        self._workers: dict[int, tuple[ForkProcess, float]] = {}
        self._quick_deaths = 0
        self._stopping = False

    def run(self) -> int:
        embedded = None
        holder = None
        try:
            settings = self._settings
            if not settings.database.url:  # one embedded server for all the workers
                embedded = EmbeddedPostgres(settings.database.data_dir)
                settings = dataclasses.replace(settings, database=dataclasses.replace(
                    settings.database, url=embedded.start()))
            if settings.server.port == 0:
                holder, port = free_port(settings.server.host)
                settings = dataclasses.replace(settings, server=dataclasses.replace(
                    settings.server, port=port))
            self._settings = settings
            previous = {sig: signal.signal(sig, self._on_signal)
                        for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                log.info("gateway_workers_starting", workers=self._count,
                         port=settings.server.port)
                for index in range(self._count):
                    self._start(index)
                return self._supervise()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        finally:
            self._stop_all()
            if holder is not None:
                holder.close()
            if embedded is not None:
                embedded.stop()

    def _start(self, index: int) -> None:
        process = self._context.Process(target=self._child, args=(index, os.getpid()),
                                        name=f"gateway-worker-{index}", daemon=False)
        process.start()
        self._workers[index] = (process, time.monotonic())

    def _child(self, index: int, parent: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):  # the worker installs its own
            signal.signal(sig, signal.SIG_DFL)
        _die_with(parent)
        self._serve(self._settings, index)

    def _supervise(self) -> int:
        while not self._stopping:
            sentinels = [process.sentinel for process, _ in self._workers.values()]
            wait(sentinels, timeout=0.5)
            for index, (process, started) in list(self._workers.items()):
                if process.is_alive() or self._stopping:
                    continue
                process.join()
                quick = time.monotonic() - started < QUICK_DEATH_S
                self._quick_deaths = self._quick_deaths + 1 if quick else 0
                log.error("gateway_worker_died", worker=index, exitcode=process.exitcode,
                          restarting=self._quick_deaths < MAX_QUICK_DEATHS)
                if self._quick_deaths >= MAX_QUICK_DEATHS:
                    return 1
                self._start(index)
        return 0 if all(p.exitcode in (0, None) for p, _ in self._workers.values()) else 1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for their drain, SIGKILL what is left."""
        for process, _ in self._workers.values():
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + self._settings.server.shutdown_timeout_s + STOP_GRACE_S
        for process, _ in self._workers.values():
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                log.error("gateway_worker_killed", pid=process.pid)
                process.kill()
                process.join()
        log.info("gateway_workers_stopped",
                 exitcodes=[p.exitcode for p, _ in self._workers.values()])


def _die_with(parent: int) -> None:
    """A worker whose parent is gone (even SIGKILLed) gets SIGTERM and drains: no orphan
    keeps serving the port behind the back of whatever restarts the server (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
