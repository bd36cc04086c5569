"""Signed callbacks following the Standard Webhooks spec, and how they are sent.

Signing uses the `standardwebhooks` package itself (`Webhook.sign`), so the signature is
by construction what that package's verifier expects: `webhook-signature` is
`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">` keyed with the
base64-decoded part of a `whsec_...` secret.

Sending is injectable (`CallbackSender`): tests capture callbacks in a list, or forward
them into the service's ASGI app, without opening a socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from math import floor
from typing import Protocol

import httpx
from standardwebhooks import Webhook

CALLBACK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """One HTTP POST the simulator makes to a webhook URL."""

    url: str
    headers: dict[str, str]
    body: bytes
    webhook_id: str = field(default="")
    event_type: str = field(default="")


class CallbackSender(Protocol):
    """Deliver a callback; return the HTTP status code. Raising counts as a failed attempt."""

    def __call__(self, request: CallbackRequest) -> int:
        """Send `request` and return the receiver's HTTP status."""
        ...


def signed_headers(
    *, secret: str, webhook_id: str, timestamp: datetime, body: bytes, content_type: str
) -> dict[str, str]:
    """Headers of a Standard Webhooks delivery of `body`, signed at `timestamp`."""
    signature = Webhook(secret).sign(msg_id=webhook_id, timestamp=timestamp, data=body.decode("utf-8"))
    return {
        "content-type": content_type,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(floor(timestamp.timestamp())),
        "webhook-signature": signature,
    }


class HttpxCallbackSender:
    """The default sender: a real HTTP POST with a bounded timeout."""

    def __init__(
        self,
        timeout_s: float = CALLBACK_TIMEOUT_S,
        client_factory: Callable[[], httpx.Client] | None = None,
    ) -> None:
        self._client = client_factory() if client_factory is not None else httpx.Client(timeout=timeout_s)

    def __call__(self, request: CallbackRequest) -> int:
        """POST the callback and return the status code; transport errors propagate."""
        response = self._client.post(request.url, content=request.body, headers=request.headers)
        return response.status_code

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._client.close()


class RecordingSender:
    """A sender for tests: remembers every request and answers a fixed status."""

    def __init__(self, status_code: int = 200) -> None:
        self.requests: list[CallbackRequest] = []
        self.status_code = status_code

    def __call__(self, request: CallbackRequest) -> int:
        """Record `request` and return the configured status."""
        self.requests.append(request)
        return self.status_code
