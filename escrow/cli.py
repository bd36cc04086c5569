"""The `escrow` command line: migrate, serve, worker, keys, audit.

A bad setting or policy file ends any command with exit status 2 and a message naming the
field, before anything touches the database.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Annotated

import structlog
import typer

from escrow import audit, events, idempotency
from escrow.auth import Role, create_key, revoke_key
from escrow.errors import ConfigurationError, EscrowError
from escrow.persistence import migrate as migrations
from escrow.persistence.db import make_engine
from escrow.ports import SystemClock
from escrow.service.holds import expire_due
from escrow.settings import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Escrow interception service.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit hash chain.")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        typer.echo(f"escrow: {exc.detail}", err=True)
        raise typer.Exit(2) from None


@app.command()
def migrate() -> None:
    """Upgrade the database to the newest schema (creates a SQLite file if needed)."""
    settings = _settings()
    make_engine(settings.database_url, pool_size=1).dispose()  # creates var/ for SQLite
    migrations.upgrade(settings.database_url)
    typer.echo(f"database at {migrations.head_revision()}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs).

    With `--workers N` > 1 the app, and so the findings matcher (~370 MB and ~14 s at a
    million patterns), is built once in a gunicorn master that then forks the workers: they
    share its pages copy-on-write instead of each building and holding a matcher of its own.
    The master also owns every later rebuild of the matcher's base and replaces the workers,
    one at a time, by forks that share the new one (see escrow.api.prefork); the workers only
    apply changes, so each change still shows on every worker within a poll.
    """
    _settings()  # refuse to start on a bad configuration before binding the port
    if workers == 1:
        import uvicorn

        uvicorn.run("escrow.bootstrap:asgi", factory=True, host=host, port=port, log_level="warning")
        return
    from escrow.api import prefork
    from escrow.bootstrap import asgi

    prefork.serve(asgi(), host, port, workers)


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="Run one round and exit.")] = False,
    interval_ms: Annotated[int, typer.Option(min=50, max=60_000)] = 500,
) -> None:
    """Background jobs: end holds at their deadlines, recover advance refunds, sweep payouts,
    deliver the outbox, publish events, seal the audit chain, expire keys. Any number of
    workers may run at once."""
    from escrow import worker as outbox_worker
    from escrow.bootstrap import rails as build_rails
    from escrow.logs import configure
    from escrow.service.payouts import sweep
    from escrow.service.recovery import Rotation, recover_outstanding

    settings = _settings()
    configure(settings.log_level, settings.log_format)
    engine = make_engine(settings.database_url, pool_size=2)
    clock = SystemClock()
    rails = build_rails(settings)
    policy = outbox_worker.Policy.of(settings)
    typer.echo("worker started", err=True)
    log = structlog.get_logger("escrow.worker")
    rotation = Rotation()
    jobs: list[tuple[str, Callable[[], int | None]]] = [
        ("expire_holds", lambda: expire_due(engine, clock.now())),
        # Before payouts, the waterfall; the sweep also skips a seller who still owes.
        (
            "recover_advance_refunds",
            lambda: recover_outstanding(engine, clock.now(), settings.policies, rotation=rotation),
        ),
        ("sweep_payouts", lambda: sweep(engine, clock.now()) if settings.payout_sweep else None),
        ("deliver_outbox", lambda: outbox_worker.deliver_due(engine, rails, clock, policy)),
        ("publish_events", lambda: events.publish(engine)),
        ("seal_audit", lambda: audit.seal_all(engine)),
        ("purge_idempotency_keys", lambda: idempotency.purge_expired(engine, clock.now())),
    ]
    frozen = False
    while True:
        delivered = 0
        for name, job in jobs:
            try:
                done = job()
            except Exception:
                # A failed job (database restarting, a row it cannot handle) is logged and
                # retried next round; every job is idempotent and leaves nothing half done.
                # The others still run: a payout that fails must not stop the audit chain.
                if once:
                    raise
                log.exception("worker_job_failed", job=name)
                continue
            if name == "deliver_outbox":
                delivered = int(done or 0)
        if once:
            return
        if not frozen:
            # After one round every module, compiled statement and connection the loop uses
            # exists: hundreds of thousands of objects that live as long as the process.
            # Frozen, no full collection scans them again; unfrozen, each took 95-285 ms of a
            # core, a burst taken from the API and database beside the worker. (What of it
            # later becomes cyclic garbage, a recycled connection say, stays: once, bounded.)
            gc.collect()
            gc.freeze()
            frozen = True
        if delivered < policy.batch:  # a full batch means more are due: go on at once
            time.sleep(interval_ms / 1000)


def _new_key(settings: Settings, role: str, party: str | None, name: str) -> tuple[str, str]:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            return create_key(
                conn,
                role=role,
                name=name,
                party_id=party,
                now=SystemClock().now(),
                pepper=settings.api_key_pepper.get_secret_value().encode(),
            )
    finally:
        engine.dispose()


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(r.value for r in Role)}.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    party: Annotated[str | None, typer.Option(help="Party id (rights_holder keys only).")] = None,
) -> None:
    """Create an API key and print it once; only its digest is stored."""
    settings = _settings()
    try:
        key_id, key = _new_key(settings, role, party, name)
    except EscrowError as exc:
        typer.echo(f"escrow: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{key_id}\t{role}\t{key}")


@keys_app.command("demo")
def keys_demo() -> None:
    """Create one key per role for a demo (the rights holder is party `rh_demo`) and print them."""
    settings = _settings()
    for role in Role:
        party = "rh_demo" if role is Role.RIGHTS_HOLDER else None
        _, key = _new_key(settings, role.value, party, f"demo {role.value}")
        typer.echo(f"{role.value:<14} {key}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (`key_…`); takes effect within the key cache TTL."""
    settings = _settings()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            revoke_key(conn, key_id, now=SystemClock().now())
    except EscrowError as exc:
        typer.echo(f"escrow: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(f"revoked {key_id}")


@audit_app.command("verify")
def audit_verify(
    seal_first: Annotated[bool, typer.Option("--seal/--no-seal", help="Seal pending records first.")] = True,
) -> None:
    """Recompute the whole chain; exit 0 only when it is intact."""
    settings = _settings()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        if seal_first:
            audit.seal_all(engine)
        result = audit.verify(engine)
    finally:
        engine.dispose()
    if result.ok:
        typer.echo(f"audit chain intact: {result.sealed} sealed records, {result.unsealed} pending")
        return
    typer.echo(f"audit chain BROKEN after {result.sealed} good records: {result.problem}", err=True)
    raise typer.Exit(1)


@audit_app.command("seal")
def audit_seal() -> None:
    """Seal every committed record now (the API and the worker do this continuously)."""
    settings = _settings()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        typer.echo(f"sealed {audit.seal_all(engine)} records")
    finally:
        engine.dispose()


def main() -> None:
    try:
        app()
    except ConfigurationError as exc:  # pragma: no cover  # _settings() handles the usual path
        typer.echo(f"escrow: {exc.detail}", err=True)
        sys.exit(2)
