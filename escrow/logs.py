"""structlog configuration: JSON lines with the request context, secrets dropped.

Redaction is a processor, not a convention, because one careless `log.info(..., iban=…)`
must not put an account number into a log shipper. Keys that name secrets are replaced,
and anything shaped like one of our API keys is masked wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "api_key",
        "apikey",
        "secret",
        "password",
        "token",
        "iban",
        "account_number",
        "pan",
        "bic_account",
    }
)
_API_KEY_RE = re.compile(r"esk_key_[0-9a-f]+_[A-Za-z0-9_\-]+")
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]){11,30}\b")


def _mask(value: str) -> str:
    value = _API_KEY_RE.sub("esk_***", value)
    return _IBAN_RE.sub(lambda m: m.group(0)[:4] + "***", value)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in SENSITIVE_KEYS:
            event[key] = "[redacted]"
        elif isinstance(event[key], str):
            event[key] = _mask(event[key])
    return event


def configure(level: str = "info", fmt: str = "json") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
