"""Inbound rail callbacks: `POST /v1/webhooks/{adapter}` (Standard Webhooks).

Verified before anything is read (bad, missing or stale signature: 401, nothing written);
parsed before any transaction (an unreadable body: 400, nothing written); then, in one
transaction, the `webhook-id` is recorded and each outcome applied. A repeated `webhook-id`
finds its receipt and is acknowledged (200) without effect, so duplicates are harmless, and
outcomes are applied by state (escrow.worker.apply), so out-of-order ones are too.
"""

from __future__ import annotations

from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Depends, Request
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from escrow.api.deps import Components, components, json_response
from escrow.api.routers.parties import rails_of
from escrow.errors import InvalidInput
from escrow.persistence.db import transaction
from escrow.persistence.tables import webhook_receipts
from escrow.ports import BankEvent, CardEvent, RailMessageUnreadable, WebhookRejected
from escrow.service.orders import _insert
from escrow.worker import apply_bank_events, apply_card_events

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
WEBHOOK_BODY_BYTES_MAX = 1 << 20


class UnreadableCallback(InvalidInput):
    code = "unreadable_callback"
    title = "Callback body cannot be read"


@router.post("/{adapter}")
async def receive(
    adapter: Literal["bank", "card"], request: Request, parts: Annotated[Components, Depends(components)]
) -> Response:
    """Verify, deduplicate and apply one callback."""
    body = await request.body()
    if len(body) > WEBHOOK_BODY_BYTES_MAX:
        raise UnreadableCallback("callback body too large")
    return await run_in_threadpool(_handle, parts, adapter, dict(request.headers), body)


def _handle(parts: Components, adapter: str, headers: dict[str, str], body: bytes) -> Response:
    rails = rails_of(parts)
    secrets = rails.webhook_secrets.get(adapter, ())
    if not secrets:
        raise WebhookRejected("bad_signature", f"no webhook secret is configured for {adapter}")
    now = parts.clock.now()
    webhook_id = rails.verify(headers, body, secrets, now)
    try:
        evts: list[BankEvent] | list[CardEvent] = (
            rails.bank.parse_notification(body) if adapter == "bank" else rails.card.parse_webhook(body)
        )
    except RailMessageUnreadable as exc:
        log.warning("webhook_unreadable", adapter=adapter, webhook_id=webhook_id, error=exc.detail)
        raise UnreadableCallback(f"the {adapter} callback cannot be read: {exc.detail}") from None

    def work(conn: Connection) -> tuple[bool, int]:
        first = conn.execute(
            _insert(conn, webhook_receipts)
            .values(adapter=adapter, webhook_id=webhook_id, received_at=now, events=len(evts))
            .on_conflict_do_nothing(index_elements=["adapter", "webhook_id"])
            .returning(webhook_receipts.c.webhook_id)
        ).first()
        if first is None:
            return False, 0
        if adapter == "bank":
            return True, apply_bank_events(conn, evts, now)  # type: ignore[arg-type]  # parsed by adapter
        return True, apply_card_events(conn, evts, now)  # type: ignore[arg-type]

    fresh, changed = transaction(parts.engine, work)
    log.info("webhook_received", adapter=adapter, webhook_id=webhook_id, duplicate=not fresh, changed=changed)
    return json_response(200, {"received": True, "duplicate": not fresh, "changed": changed})
