"""The audit chain's fast canonical JSON must be byte for byte RFC 8785, or every hash changes."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from escrow.audit import canonical_json

# Everything audit records hold and more: any text (controls, U+2028, astral characters),
# integers up to RFC 8785's exact range and beyond, floats, nested lists and objects.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=500)
@given(values)
def test_same_bytes_as_the_reference(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def test_an_audit_shaped_record() -> None:
    record = {
        "pos": 7,
        "prev": "0" * 64,
        "seq": 12,
        "occurred_at": "2026-11-29T10:00:00.000000+00:00",
        "actor": "key_0123456789abcdef",
        "role": "checkout",
        "action": "order.recorded",
        "object_id": "ord-\u00e9\u2028\U0001f600",
        "reason": None,
        "request_id": "req_1",
        "data": {"amount": {"amount": 10**15, "currency": "EUR"}, "holds": [], "ok": True},
    }
    assert canonical_json(record) == rfc8785.dumps(record)
