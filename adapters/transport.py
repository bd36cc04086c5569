"""HTTP plumbing shared by the rail adapters: error mapping and the bounded retry.

The one question every rail call must answer is "could money have moved?". The mapping
below answers it from what the client saw, conservatively:

    what happened                                  instruction (POST)     query (GET)
    connection refused / connect or pool timeout   RailUnavailable        RailUnavailable
    timeout or connection lost after sending       OutcomeUnknown         RailUnavailable
    429, 503 (the server says: not processed)      RailUnavailable        RailUnavailable
    500, 502, 504, any other 5xx                   OutcomeUnknown         RailUnavailable
    2xx, 4xx                                       the adapter reads it   the adapter reads it

A 502 or 500 may come from a gateway after the bank processed the request, so only 503
and 429 count as "nothing happened". A query changes nothing, so any failure of one is
safe to retry. Only RailUnavailable is retried here; OutcomeUnknown goes back to the caller,
who resolves it by asking the rail with the same idempotency key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import httpx
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tenacity.wait import wait_base

from escrow.ports import OutcomeUnknown, RailRequestRefused, RailUnavailable

# Named limits of the adapters' own retry (escrow.limits is the core's; adapters may not import
# it). Four attempts with full jitter up to 8 s keep a call under ~15 s in the worst case, so
# the outbox worker, which retries much later with the same key, stays in charge of long outages.
ADAPTER_ATTEMPTS_MAX = 4
ADAPTER_BACKOFF_MULTIPLIER_S = 0.5
ADAPTER_BACKOFF_CAP_S = 8.0
PROBLEM_CODE_CHARS_MAX = 64

log = structlog.get_logger("adapters")

T = TypeVar("T")


class Exchange(Enum):
    """Whether a request can move money (changes how a lost answer is read)."""

    INSTRUCTION = "instruction"
    QUERY = "query"


def default_wait() -> wait_base:
    """Exponential backoff with full jitter, capped (AWS "full jitter": spreads retry storms)."""
    return wait_random_exponential(multiplier=ADAPTER_BACKOFF_MULTIPLIER_S, max=ADAPTER_BACKOFF_CAP_S)


@dataclass(frozen=True)
class RetryPolicy:
    """How an adapter retries RailUnavailable; tests inject `sleep` so nothing waits."""

    attempts_max: int = ADAPTER_ATTEMPTS_MAX
    wait: wait_base = field(default_factory=default_wait)
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if not 1 <= self.attempts_max <= ADAPTER_ATTEMPTS_MAX:
            raise ValueError(f"attempts_max must be 1..{ADAPTER_ATTEMPTS_MAX}")

    def run(self, operation: str, key: str | None, fn: Callable[[], T]) -> T:
        """Call `fn`, retrying only RailUnavailable, at most `attempts_max` times in all.

        The last RailUnavailable is re-raised as is; every other exception passes at once.
        """

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            wait_s = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "rail_call_retried",
                operation=operation,
                key=key,
                attempt=state.attempt_number,
                wait_s=round(wait_s, 3),
                error=str(error),
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts_max),
            wait=self.wait,
            retry=retry_if_exception_type(RailUnavailable),
            sleep=self.sleep,
            reraise=True,
            before_sleep=log_retry,
        )
        return retrying(fn)


def request(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    exchange: Exchange,
    key: str | None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send one request and translate transport failures and 5xx into rail exceptions.

    Returns the response for 2xx and 4xx, which only the adapter can interpret.
    """
    try:
        response = client.request(method, url, content=content, headers=headers, params=params)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # Nothing left this process, or the server never accepted the connection.
        raise RailUnavailable(f"{method} {url}: could not connect ({type(exc).__name__})", key=key) from exc
    except httpx.UnsupportedProtocol as exc:
        raise RailRequestRefused(f"{method} {url}: bad rail URL configuration", key=key) from exc
    except httpx.TransportError as exc:
        # Read/write timeouts, a connection cut mid-response, a protocol error: the request
        # may have been processed.
        if exchange is Exchange.QUERY:
            raise RailUnavailable(f"{method} {url}: {type(exc).__name__}", key=key) from exc
        raise OutcomeUnknown(f"{method} {url}: no complete answer ({type(exc).__name__})", key=key) from exc
    status = response.status_code
    if status in (429, 503):
        raise RailUnavailable(f"{method} {url}: {status} {problem_code(response) or ''}".rstrip(), key=key)
    if status >= 500:
        if exchange is Exchange.QUERY:
            raise RailUnavailable(f"{method} {url}: {status}", key=key)
        raise OutcomeUnknown(f"{method} {url}: {status} {problem_code(response) or ''}".rstrip(), key=key)
    return response


def problem_code(response: httpx.Response) -> str | None:
    """The `code` of an RFC 9457 problem body, if there is a readable one."""
    try:
        body: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code[:PROBLEM_CODE_CHARS_MAX] if isinstance(code, str) else None


def refused(response: httpx.Response, key: str | None) -> RailRequestRefused:
    """The exception for a 4xx the adapter has no better meaning for."""
    code = problem_code(response) or "no problem code"
    return RailRequestRefused(f"rail answered {response.status_code} ({code})", key=key, status=response.status_code)
