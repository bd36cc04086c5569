"""`escrow serve --workers N`: gunicorn with the findings matcher built in the master and shared.

Why: a base of a million patterns costs ~370 MB and ~14 s of a core. Built in the master before
the workers fork, its pages are shared copy-on-write by every worker. Built again inside a
worker (a background thread beside its requests), it would hold that worker's GIL for seconds,
delaying its requests and its change polls, and end up as private memory, once per worker.

So the workers' registries never rebuild a base (`MatcherRegistry.rebuilds_base = False`): they
apply every change through their overlay within a poll, and their overlay may outgrow its bounds
for a while. The master owns rebuilds. About every MASTER_CHECK_INTERVAL_S its main loop
(`MasterMatcher.tick`):

1. applies changes to the master's own overlay (milliseconds): that is what `base_due` sizes,
   and what a freshly forked worker starts from;
2. when a base is due, builds it synchronously, in the master's main thread. Blocking the loop is
   acceptable, as the master serves no request; it only delays what the loop does besides, by
   the build's length (~14 s at a million patterns): reaping and replacing a crashed worker,
   and obeying a signal (SIGTERM included). Not in a thread: forking while another thread runs
   (and may hold a lock, the allocator's or the logging module's) can leave the child
   deadlocked, and the loop forks;
3. after a new base: `gc.collect(); gc.freeze()`, then replaces the workers one at a time,
   oldest first, without downtime: fork a fresh worker (it shares the new base), wait until it
   heartbeats (its lifespan ran and it accepts on the shared listening socket) or at most
   ROLL_BOOT_WAIT_S, then SIGTERM one old worker, which finishes its in-flight requests. During
   a roll, old workers still hold the old base and new ones share the new: two bases, briefly.
   The master itself holds both while it builds (the old one serves until the swap).

A failed build is logged and tried again at the next due check; nothing here stops the master.
Whatever the master reads, it reads through pooled connections that it closes right after
(`engine.dispose()`), so no database socket is ever inherited by a fork; each worker also drops,
unclosed, whatever pool it might have inherited (`post_fork`), as SQLAlchemy advises for forks.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]  # no type hints shipped
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]

from escrow.api.balance import AcceptGate, BalancedWorker
from escrow.screening.registry import MatcherRegistry
from escrow.service.findings import FindingsScreener

if TYPE_CHECKING:
    from fastapi import FastAPI

log = structlog.get_logger(__name__)

PREFORK_GRACEFUL_TIMEOUT_S: Final = 10
"""SIGTERM at shutdown: in-flight requests get this long to finish."""

PREFORK_WORKER_TIMEOUT_S: Final = 60
"""A worker silent this long is killed and replaced. Its heartbeat comes from its event loop, which
an overlay build (~0.3 s at OVERLAY_PATTERNS_MAX) only delays; a retired worker stuck in a request
ends by this too."""

MASTER_CHECK_INTERVAL_S: Final = 1.0
"""How often the master applies changes to its overlay and checks whether a base is due. Workers see
changes through their own polls: this only decides how soon a due base starts building."""

ROLL_BOOT_WAIT_S: Final = 10.0
"""How long a roll waits for a fresh worker's first heartbeat before it stops an old one anyway: a
preloaded worker boots in well under a second, so waiting longer would only leave an overgrown
overlay in service."""

ROLL_STEP_S: Final = 0.1
"""The master loop's sleep while a roll is in progress (1 s otherwise), so a fresh worker's
heartbeat is noticed soon after it comes."""


class WorkerPool(Protocol):
    """The worker processes as the roll sees them (gunicorn's arbiter, or a fake in tests)."""

    def workers(self) -> list[int]:
        """Pids of the workers serving, oldest first (not those being retired)."""
        ...

    def spawn(self) -> int:
        """Fork one more worker from this process, on top of the configured number; its pid."""
        ...

    def is_up(self, pid: int) -> bool:
        """Whether worker `pid` has booted and accepts connections."""
        ...

    def retire(self, pid: int) -> None:
        """Stop worker `pid` gracefully (in-flight requests finish), undoing one `spawn`."""
        ...


@dataclass
class _Roll:
    old: list[int]  # workers forked before the base in service, oldest first
    fresh: int | None = None  # the worker spawned to replace old[0], until it is up
    fresh_since_s: float = 0.0
    spawned: list[int] = field(default_factory=list)


class MasterMatcher:
    """The master's side of the matcher: applies changes, builds a due base, rolls the workers.

    `registry` is the preloaded app's, in no-rebuild mode like the workers' (a fork inherits it);
    `after_read` closes whatever database connections the round opened (see the module
    docstring). `tick` does all the work, on the caller's thread, and never raises but
    SystemExit (a forked child leaving the master's loop).
    """

    def __init__(
        self,
        registry: MatcherRegistry,
        *,
        after_read: Callable[[], None],
        check_interval_s: float = MASTER_CHECK_INTERVAL_S,
        boot_wait_s: float = ROLL_BOOT_WAIT_S,
    ) -> None:
        self._registry = registry
        self._after_read = after_read
        self.check_interval_s = check_interval_s
        self.boot_wait_s = boot_wait_s
        self._next_check_s = float("-inf")
        self._roll: _Roll | None = None
        self.bases_built = 0
        self.rolls_done = 0

    @property
    def rolling(self) -> bool:
        """Whether workers forked before the base in service are still being replaced."""
        return self._roll is not None

    def tick(self, pool: WorkerPool, now_s: float) -> None:
        """One step of the master loop, `now_s` on a monotonic clock; call it about every second,
        and every ROLL_STEP_S while `rolling`. No due check starts while a roll is in progress:
        its fresh workers already carry the newest base."""
        if self._roll is None and now_s >= self._next_check_s:
            self._next_check_s = now_s + self.check_interval_s
            if self._refresh():
                self._roll = _Roll(old=pool.workers())
                log.info("findings_workers_roll_started", workers=len(self._roll.old))
        if self._roll is not None:
            self._advance(self._roll, pool, now_s)

    def _refresh(self) -> bool:
        """Apply changes to the overlay; build a base if one is due. Returns whether a new base serves."""
        registry = self._registry
        started = 0.0
        try:
            if not registry.base_due():
                registry.poll()  # overlay only: the registry does not rebuild on its own here
            if not registry.base_due():
                return False
            log.info("findings_master_base_due")
            started = time.monotonic()
            registry.refresh_now(force=True)
        except Exception:  # logged; the next due check tries again (a refused set is not retried until it changes)
            log.exception("findings_master_refresh_failed")
            return False
        finally:
            self._after_read()
        # The old base's objects were frozen with everything else: unfreeze so a collection can
        # reclaim what of it sits in reference cycles, then freeze the new base so the workers'
        # collections never write into the headers of the objects they share (each such write
        # would copy a page).
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.bases_built += 1
        log.info("findings_master_base_built", build_ms=int((time.monotonic() - started) * 1000))  # read, build, freeze
        return True

    def _advance(self, roll: _Roll, pool: WorkerPool, now_s: float) -> None:
        live = pool.workers()
        roll.old = [pid for pid in roll.old if pid in live]  # one that died was replaced from the new base already
        if roll.fresh is not None:
            booting = roll.fresh in live and not pool.is_up(roll.fresh)
            if booting and now_s - roll.fresh_since_s < self.boot_wait_s:
                return
            if booting:
                log.warning("findings_worker_boot_slow", pid=roll.fresh, waited_s=round(now_s - roll.fresh_since_s, 1))
            if roll.old:
                retired = roll.old.pop(0)
                pool.retire(retired)
                log.info(
                    "findings_worker_replaced",
                    retired=retired,
                    fresh=roll.fresh,
                    boot_ms=int((now_s - roll.fresh_since_s) * 1000),
                )
            roll.fresh = None
        if not roll.old:
            self._roll = None
            self.rolls_done += 1
            log.info("findings_workers_rolled", workers=roll.spawned)
            return
        roll.fresh = pool.spawn()  # in the child, this raises SystemExit once the worker ends
        roll.fresh_since_s = now_s
        roll.spawned.append(roll.fresh)


class _ArbiterPool:
    """gunicorn's arbiter as a `WorkerPool`.

    A roll runs one worker over the configured number: `spawn` raises `num_workers` by one (or
    gunicorn's `manage_workers` would stop the oldest worker at once, before the fresh one is
    up), and a retired worker lowers it again only once it has exited (before, gunicorn would
    count it and SIGTERM it again, or count its exit as a loss and fork a replacement).
    """

    def __init__(self, arbiter: Any) -> None:
        self._arbiter = arbiter
        self._born: dict[int, float] = {}  # pid -> its heartbeat file's mtime when forked
        self._retiring: set[int] = set()

    def workers(self) -> list[int]:
        ordered = sorted(self._arbiter.WORKERS.items(), key=lambda item: item[1].age)
        return [pid for pid, _ in ordered if pid not in self._retiring]

    def spawn(self) -> int:
        self._arbiter.num_workers += 1
        pid = int(self._arbiter.spawn_worker())
        # The worker touches this file from its event loop, first right after its lifespan
        # started and it listens; read now, microseconds after the fork, before it can have.
        self._born[pid] = self._arbiter.WORKERS[pid].tmp.last_update()
        return pid

    def is_up(self, pid: int) -> bool:
        worker = self._arbiter.WORKERS.get(pid)
        if worker is None:
            return False
        try:
            return bool(worker.tmp.last_update() != self._born.get(pid))
        except (OSError, ValueError):  # its file is closed: it exited
            return False

    def retire(self, pid: int) -> None:
        self._retiring.add(pid)
        self._arbiter.kill_worker(pid, signal.SIGTERM)

    def forget_exited(self) -> None:
        """Lower `num_workers` for each retired worker that has exited (call before `manage_workers`)."""
        workers = self._arbiter.WORKERS
        for pid in [pid for pid in self._retiring if pid not in workers]:
            self._retiring.discard(pid)
            self._arbiter.num_workers -= 1
        for pid in [pid for pid in self._born if pid not in workers]:
            del self._born[pid]


class _RollingArbiter(Arbiter):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's master loop, plus a `MasterMatcher.tick` after each round of worker upkeep."""

    def __init__(self, app: Any, master: MasterMatcher) -> None:
        self._master = master
        self._pool = _ArbiterPool(self)
        super().__init__(app)

    def manage_workers(self) -> None:
        self._pool.forget_exited()
        super().manage_workers()
        self._master.tick(self._pool, time.monotonic())

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        return list(super().wait_for_signals(ROLL_STEP_S if self._master.rolling else timeout))


def registry_of(application: FastAPI) -> MatcherRegistry | None:
    """The findings registry of a built app, if its screener uses one."""
    screener = application.state.components.screener
    return screener.registry if isinstance(screener, FindingsScreener) else None


def serve(application: FastAPI, host: str, port: int, workers: int) -> None:
    """Serve the built `application` from `workers` forked processes until SIGTERM (see the module docstring)."""
    engine = application.state.components.engine
    registry = registry_of(application)
    if registry is not None:
        registry.rebuilds_base = False  # before any fork: every worker inherits it
    engine.dispose()  # the master serves nothing: no socket of its own survives into a child
    gc.collect()
    gc.freeze()  # keeps the workers' collections from writing into the shared objects' headers
    master = MasterMatcher(registry, after_read=engine.dispose) if registry is not None else None

    BalancedWorker.gate = AcceptGate()  # before any fork: every worker shares its table

    def post_fork(_server: object, _worker: object) -> None:
        engine.dispose(close=False)

    options: dict[str, object] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "escrow.api.balance.BalancedWorker",
        "preload_app": True,
        "post_fork": post_fork,
        "graceful_timeout": PREFORK_GRACEFUL_TIMEOUT_S,
        "timeout": PREFORK_WORKER_TIMEOUT_S,
        "loglevel": "warning",
        "accesslog": None,
        # gunicorn >= 24 serves a control socket from a thread of the master: no thread may run
        # there while it forks (see the module docstring), and nothing here uses it.
        "control_socket_disable": True,
    }

    class Prefork(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # an older gunicorn lacks the newer settings
                    self.cfg.set(key, value)

        def load(self) -> object:
            return application

        def run(self) -> None:
            arbiter = _RollingArbiter(self, master) if master is not None else Arbiter(self)
            try:
                arbiter.run()
            except RuntimeError as exc:  # as gunicorn's own `run`: a bad bind address, say
                print(f"\nError: {exc}\n", file=sys.stderr)
                sys.exit(1)

    Prefork().run()
