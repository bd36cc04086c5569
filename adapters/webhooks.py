"""Verify signed callbacks from either rail, per the Standard Webhooks spec.

A callback carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
(space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`). The signature
itself is computed by the `standardwebhooks` package (`Webhook.sign`), the same code the
simulator signs with; the checks around it are done here because the package's own
`verify` reads the wall clock (tests and replays need an injectable `now`) and reports every
failure with one exception type (the receiver needs to log *why*).

Secret rotation: pass every secret in force, newest first; a callback signed with any of
them passes. Timestamps more than `WEBHOOK_TOLERANCE` away from `now`, in either direction,
are refused as `stale`: that bounds how long a captured callback can be replayed, and the
`webhook-id` the receiver deduplicates on covers the window.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from escrow.errors import ConfigurationError
from escrow.ports import WebhookRejected

WEBHOOK_TOLERANCE = timedelta(minutes=5)
WEBHOOK_ID_CHARS_MAX = 255
SIGNATURES_PER_HEADER_MAX = 16  # a sender in rotation sends a few; thousands is an attack
SECRETS_MAX = 8


def _header(headers: Mapping[str, str], name: str) -> str:
    value = next((v for k, v in headers.items() if k.lower() == name), None)
    if value is None or not value.strip():
        raise WebhookRejected("missing_header", f"{name} header missing")
    return value.strip()


def _signers(secrets: Sequence[str]) -> list[Webhook]:
    if not 1 <= len(secrets) <= SECRETS_MAX:
        raise ConfigurationError(f"configure 1..{SECRETS_MAX} webhook secrets")
    try:
        return [Webhook(secret) for secret in secrets]
    except (binascii.Error, ValueError, EmptyWebhookSecretError) as exc:
        raise ConfigurationError("a webhook secret is not a base64 `whsec_...` secret") from exc


def _passed_signatures(header: str) -> list[bytes]:
    """The v1 signatures of a `webhook-signature` header; other versions are ignored."""
    parts = header.split()
    if len(parts) > SIGNATURES_PER_HEADER_MAX:
        raise WebhookRejected("malformed_header", "too many signatures")
    signatures: list[bytes] = []
    for part in parts:
        version, _, encoded = part.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            signatures.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return signatures


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: datetime) -> str:
    """Return the `webhook-id` of an authentic, fresh callback; raise WebhookRejected otherwise.

    Reasons: `missing_header`, `malformed_header` (timestamp not an integer, id too long),
    `stale` (outside WEBHOOK_TOLERANCE of `now`), `bad_signature` (no secret matches, or
    the body is not UTF-8 and so cannot have been signed as Standard Webhooks text).
    Raises ConfigurationError for missing or malformed secrets.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    signers = _signers(secrets)
    webhook_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    signature_header = _header(headers, "webhook-signature")
    if len(webhook_id) > WEBHOOK_ID_CHARS_MAX or not webhook_id.isprintable():
        raise WebhookRejected("malformed_header", "webhook-id too long or not printable")
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit() or len(raw_timestamp) > 12:
        raise WebhookRejected("malformed_header", "webhook-timestamp is not Unix seconds")
    timestamp = datetime.fromtimestamp(int(raw_timestamp), UTC)
    if abs(now - timestamp) > WEBHOOK_TOLERANCE:
        raise WebhookRejected("stale", f"webhook-timestamp {raw_timestamp} outside the tolerance")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("bad_signature", "body is not UTF-8") from None
    passed = _passed_signatures(signature_header)
    for signer in signers:
        expected = base64.b64decode(signer.sign(msg_id=webhook_id, timestamp=timestamp, data=text).split(",", 1)[1])
        if any(hmac.compare_digest(expected, candidate) for candidate in passed):
            return webhook_id
    raise WebhookRejected("bad_signature", "no matching signature")
