"""The request body cap admits every valid request it claims to."""

from __future__ import annotations

import json

from escrow.api.routers.orders import BatchIn, OrderIn
from escrow.limits import AMOUNT_MINOR_MAX, BATCH_ORDERS_MAX, REQUEST_BODY_BYTES_MAX

ASTRAL = "\U0001f45c"  # one character, four bytes of UTF-8, twelve as JSON's \ud83d\udc5c


def longest_order(n: int) -> dict[str, object]:
    """The most bytes one valid order can take as JSON: every field at its maximum length,
    free text all characters outside the BMP, which an ASCII-only encoder writes as two escapes."""
    external = f"{n:0>120}"
    return {
        "order_id": external,
        "buyer_id": external,
        "seller_id": external,
        "listing_id": external,
        "title": ASTRAL * 1000,
        "amount": {"amount": AMOUNT_MINOR_MAX, "currency": "EUR"},
        "payment": {"method": "bank_transfer", "reference": ASTRAL * 140},
        "jurisdiction": "ABCDEFGH",
    }


def test_a_full_batch_of_the_longest_orders_fits_under_the_body_cap() -> None:
    """Python's json.dumps escapes by default: a 1,000-order batch of the longest orders is
    ~14.4 MB that way (~5.3 MB as UTF-8), and was refused (413) under the former 8 MiB cap."""
    batch = {"orders": [longest_order(n) for n in range(BATCH_ORDERS_MAX)]}
    for order in BatchIn.model_validate(batch).orders[:3]:
        OrderIn.model_validate(order)  # the longest orders still valid, not one character more
    escaped = json.dumps(batch).encode()
    assert len(escaped) > 8 * 1024 * 1024
    assert len(escaped) <= REQUEST_BODY_BYTES_MAX
    assert len(json.dumps(batch, ensure_ascii=False).encode()) <= REQUEST_BODY_BYTES_MAX
