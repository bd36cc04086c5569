"""ISO 20022 wire format of the bank: write pain.001, read pain.002, camt.054 and camt.053.

Writing: the pain.001 is built here rather than by `sepaxml`, because sepaxml always writes
two decimals (500 JPY would leave as "5.00", i.e. 5 yen; 1234 fils as "12.34", i.e. 12.340
KWD). Amounts are written from integer minor units with the currency's ISO 4217 exponent,
and every document is validated, before it leaves, against the official XSD that sepaxml
ships (`sepaxml/schemas/pain.001.001.0{3,9}.xsd`), using lxml's validator.

Reading: every inbound document goes through `defusedxml` with DTDs, entities and external
references forbidden (billion laughs and XXE are the classic attacks on payment files), and
a size cap. Amounts are parsed with `Decimal` and integer scaling, never float, and a digit
beyond the currency's exponent is refused rather than rounded.
"""

from __future__ import annotations

import functools
import importlib.resources
import xml.etree.ElementTree as ET  # building only: parsing goes through defusedxml
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Literal

import defusedxml  # type: ignore[import-untyped]  # no stubs published
import defusedxml.ElementTree as DET  # type: ignore[import-untyped]  # same
import structlog
from lxml import etree  # type: ignore[import-untyped]  # no stubs; used only to validate our own output

from escrow.errors import InvalidMoney
from escrow.money import Money, currency_exponent
from escrow.ports import (
    AccountStatement,
    BankAccount,
    BankEvent,
    BankEventKind,
    CreditTransfer,
    EntryDirection,
    InvalidInstruction,
    RailMessageUnreadable,
    Statement,
    StatementEntry,
    TransferState,
)

log = structlog.get_logger("adapters.bank")

MESSAGE_BYTES_MAX = 16 * 1024 * 1024  # a month of statement entries fits; a zip bomb does not
ENTRIES_PER_MESSAGE_MAX = 100_000
Pain001Schema = Literal["pain.001.001.03", "pain.001.001.09"]
PAIN001_NS = {
    "pain.001.001.03": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03",
    "pain.001.001.09": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09",
}
NS_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"

# pain.002 transaction statuses (ExternalPaymentTransactionStatus1Code) by meaning.
_IN_PROGRESS = frozenset({"ACTC", "ACCP", "ACSP", "ACWC", "ACWP", "PDNG", "RCVD", "PART"})
_SETTLED = frozenset({"ACSC", "ACCC"})
RETURNED_MARKER = "RETURNED"  # AddtlInf of an ACSC line whose transfer came back


# --- amounts --------------------------------------------------------------------------------


def amount_text(amount: Money) -> str:
    """Minor units as the decimal ISO 20022 expects: (500, JPY) -> 500, (1234, KWD) -> 1.234."""
    exponent = currency_exponent(amount.currency)
    units, minor = divmod(amount.amount_minor, 10**exponent)
    return f"{units}.{minor:0{exponent}d}" if exponent else str(units)


def parse_amount(text: str | None, currency: str | None, *, signed: int = 1) -> Money:
    """Read an ISO 20022 amount exactly; raises RailMessageUnreadable, never rounds."""
    if text is None or not currency:
        raise RailMessageUnreadable("amount or currency missing")
    try:
        exponent = currency_exponent(currency)
        value = Decimal(text.strip())
    except (InvalidMoney, InvalidOperation) as exc:
        raise RailMessageUnreadable(f"unreadable amount {text!r} {currency!r}") from exc
    if not value.is_finite() or value < 0:
        raise RailMessageUnreadable(f"amount {text!r} is not a non-negative decimal")
    scaled = value.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise RailMessageUnreadable(f"{text} has more decimals than {currency} allows ({exponent})")
    try:
        return Money(signed * int(scaled), currency)
    except InvalidMoney as exc:
        raise RailMessageUnreadable(f"amount {text} {currency} out of range") from exc


# --- pain.001 -------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _agent(parent: ET.Element, tag: str, bic: str | None, schema: Pain001Schema) -> None:
    institution = _sub(_sub(parent, tag), "FinInstnId")
    if bic:
        _sub(institution, "BIC" if schema == "pain.001.001.03" else "BICFI", bic)
    else:
        # The SEPA convention for "the IBAN identifies the bank" (IBAN-only payments).
        _sub(_sub(institution, "Othr"), "Id", "NOTPROVIDED")


@functools.cache
def _xsd(schema: Pain001Schema) -> etree.XMLSchema:
    """The official XSD shipped by sepaxml, loaded once (a local, trusted file)."""
    path = importlib.resources.files("sepaxml") / "schemas" / f"{schema}.xsd"
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(path), parser))  # a trusted file of an installed package


def render_pain001(
    transfer: CreditTransfer,
    debtor: BankAccount,
    *,
    message_id: str,
    created_at: datetime,
    execution_date: date,
    schema: Pain001Schema = "pain.001.001.03",
) -> bytes:
    """One credit transfer as a pain.001, schema-valid; raises InvalidInstruction otherwise.

    One transfer per message: the bank deduplicates on EndToEndId, and a message of one
    never leaves the caller guessing which of several lines a lost answer was about.
    """
    amount = amount_text(transfer.amount)
    root = ET.Element("Document", {"xmlns": PAIN001_NS[schema]})
    initiation = _sub(root, "CstmrCdtTrfInitn")
    header = _sub(initiation, "GrpHdr")
    _sub(header, "MsgId", message_id)
    _sub(header, "CreDtTm", created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    _sub(header, "NbOfTxs", "1")
    _sub(header, "CtrlSum", amount)
    _sub(_sub(header, "InitgPty"), "Nm", debtor.name)
    payment = _sub(initiation, "PmtInf")
    _sub(payment, "PmtInfId", message_id)
    _sub(payment, "PmtMtd", "TRF")
    _sub(payment, "BtchBookg", "false")  # one entry per transfer, so camt.054 refers to it alone
    _sub(payment, "NbOfTxs", "1")
    _sub(payment, "CtrlSum", amount)
    if transfer.amount.currency == "EUR":
        _sub(_sub(_sub(payment, "PmtTpInf"), "SvcLvl"), "Cd", "SEPA")
    if schema == "pain.001.001.03":
        _sub(payment, "ReqdExctnDt", execution_date.isoformat())
    else:
        _sub(_sub(payment, "ReqdExctnDt"), "Dt", execution_date.isoformat())
    _sub(_sub(payment, "Dbtr"), "Nm", debtor.name)
    _sub(_sub(_sub(payment, "DbtrAcct"), "Id"), "IBAN", debtor.iban)
    _agent(payment, "DbtrAgt", debtor.bic, schema)
    _sub(payment, "ChrgBr", "SLEV" if transfer.amount.currency == "EUR" else "SHAR")
    tx = _sub(payment, "CdtTrfTxInf")
    _sub(_sub(tx, "PmtId"), "EndToEndId", transfer.end_to_end_id)
    _sub(_sub(tx, "Amt"), "InstdAmt", amount, Ccy=transfer.amount.currency)
    if transfer.creditor.bic:
        _agent(tx, "CdtrAgt", transfer.creditor.bic, schema)
    _sub(_sub(tx, "Cdtr"), "Nm", transfer.creditor.name)
    _sub(_sub(_sub(tx, "CdtrAcct"), "Id"), "IBAN", transfer.creditor.iban)
    if transfer.remittance:
        _sub(_sub(tx, "RmtInf"), "Ustrd", transfer.remittance)
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    if not isinstance(body, bytes):  # typeshed says Any; with an encoding it is bytes
        raise TypeError("ElementTree returned text for an encoded document")
    _validate(body, schema)
    return body


def _validate(body: bytes, schema: Pain001Schema) -> None:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        document = etree.fromstring(body, parser)  # our own output, built above
    except etree.XMLSyntaxError as exc:  # e.g. a character XML 1.0 cannot carry
        raise InvalidInstruction(f"{schema} not well-formed: {exc}") from exc
    validator = _xsd(schema)
    if not validator.validate(document):
        first = validator.error_log.filter_from_errors()[0]
        raise InvalidInstruction(f"{schema} schema violation: {first.message}")


# --- reading --------------------------------------------------------------------------------


def parse_document(body: bytes) -> tuple[str, ET.Element]:
    """Parse untrusted XML safely; return (message name such as 'camt.054.001.02', root)."""
    if len(body) > MESSAGE_BYTES_MAX:
        raise RailMessageUnreadable(f"message over {MESSAGE_BYTES_MAX} bytes")
    try:
        root = DET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError) as exc:
        raise RailMessageUnreadable(f"not a safe, well-formed XML document: {type(exc).__name__}") from exc
    if not isinstance(root, ET.Element) or not root.tag.startswith("{" + NS_PREFIX):
        raise RailMessageUnreadable("not an ISO 20022 document")
    namespace, _, local = root.tag[1:].partition("}")
    if local != "Document":
        raise RailMessageUnreadable(f"root element {local!r} is not Document")
    return namespace.removeprefix(NS_PREFIX), root


class _Reader:
    """Namespace-qualified lookups under one document namespace."""

    def __init__(self, root: ET.Element) -> None:
        self.ns = root.tag[1:].partition("}")[0]

    def q(self, path: str) -> str:
        return "/".join(f"{{{self.ns}}}{step}" for step in path.split("/"))

    def find(self, el: ET.Element, path: str) -> ET.Element | None:
        return el.find(self.q(path))

    def all(self, el: ET.Element, path: str) -> list[ET.Element]:
        found = el.findall(self.q(path))
        if len(found) > ENTRIES_PER_MESSAGE_MAX:
            raise RailMessageUnreadable(f"more than {ENTRIES_PER_MESSAGE_MAX} {path} elements")
        return found

    def text(self, el: ET.Element, path: str) -> str | None:
        found = el.find(self.q(path))
        if found is None or found.text is None:
            return None
        return found.text.strip() or None

    def required(self, el: ET.Element, path: str) -> str:
        value = self.text(el, path)
        if value is None:
            raise RailMessageUnreadable(f"{path} is required")
        return value

    def amount(self, el: ET.Element, path: str, *, signed: int = 1) -> Money:
        found = el.find(self.q(path))
        if found is None:
            raise RailMessageUnreadable(f"{path} is required")
        return parse_amount(found.text, found.get("Ccy"), signed=signed)

    def status(self, el: ET.Element) -> str | None:
        """Entry status: a plain code in camt.05x.001.02, `Sts/Cd` in later versions."""
        return self.text(el, "Sts") or self.text(el, "Sts/Cd")

    def day(self, el: ET.Element, path: str) -> date | None:
        raw = self.text(el, f"{path}/Dt") or self.text(el, f"{path}/DtTm")
        if raw is None:
            return None
        try:
            return date.fromisoformat(raw[:10])
        except ValueError as exc:
            raise RailMessageUnreadable(f"{path} is not a date") from exc


@dataclass(frozen=True, slots=True)
class TxLine:
    """One transaction status of a pain.002, in domain terms."""

    end_to_end_id: str
    state: TransferState
    reason_code: str | None
    detail: str | None
    amount: Money | None


@dataclass(frozen=True, slots=True)
class Pain002:
    """A payment status report: the group status and one line per transaction."""

    message_id: str
    group_status: str | None
    group_reason: str | None
    lines: tuple[TxLine, ...]

    def line(self, end_to_end_id: str) -> TxLine | None:
        """The line about `end_to_end_id`, if the report has one."""
        return next((line for line in self.lines if line.end_to_end_id == end_to_end_id), None)


def _tx_state(code: str, detail: str | None) -> TransferState:
    if code == "RJCT":
        return TransferState.REJECTED
    if code in _SETTLED:
        return TransferState.RETURNED if detail == RETURNED_MARKER else TransferState.BOOKED
    if code in _IN_PROGRESS:
        return TransferState.ACCEPTED
    raise RailMessageUnreadable(f"unknown transaction status {code!r}")


def parse_pain002(body: bytes) -> Pain002:
    """Read a pain.002 status report; raises RailMessageUnreadable."""
    name, root = parse_document(body)
    if not name.startswith("pain.002."):
        raise RailMessageUnreadable(f"expected a pain.002, got {name}")
    return _read_pain002(root)


def _read_pain002(root: ET.Element) -> Pain002:
    r = _Reader(root)
    report = r.find(root, "CstmrPmtStsRpt")
    if report is None:
        raise RailMessageUnreadable("CstmrPmtStsRpt is required")
    lines: list[TxLine] = []
    for line in r.all(report, "OrgnlPmtInfAndSts/TxInfAndSts"):
        detail = r.text(line, "StsRsnInf/AddtlInf")
        amount_el = r.find(line, "OrgnlTxRef/Amt/InstdAmt")
        lines.append(
            TxLine(
                end_to_end_id=r.required(line, "OrgnlEndToEndId"),
                state=_tx_state(r.required(line, "TxSts"), detail),
                reason_code=r.text(line, "StsRsnInf/Rsn/Cd"),
                detail=detail,
                amount=None if amount_el is None else parse_amount(amount_el.text, amount_el.get("Ccy")),
            )
        )
    return Pain002(
        message_id=r.required(report, "GrpHdr/MsgId"),
        group_status=r.text(report, "OrgnlGrpInfAndSts/GrpSts"),
        group_reason=r.text(report, "OrgnlGrpInfAndSts/StsRsnInf/Rsn/Cd"),
        lines=tuple(lines),
    )


def parse_notification(body: bytes) -> list[BankEvent]:
    """Read a bank callback: camt.054 (booked, returned) or pain.002 (rejected).

    Entries that are not final (pending) or not about our transfers (an incoming credit that
    is no return, an entry without EndToEndId) give no event; they are logged and skipped,
    because the receiver must still acknowledge the callback.
    """
    name, root = parse_document(body)
    if name.startswith("camt.054."):
        return _read_camt054(root)
    if name.startswith("pain.002."):
        report = _read_pain002(root)
        return [
            BankEvent(
                kind=BankEventKind.REJECTED,
                end_to_end_id=line.end_to_end_id,
                amount=line.amount,
                reason_code=line.reason_code,
                message_id=report.message_id,
            )
            for line in report.lines
            if line.state is TransferState.REJECTED
        ]
    raise RailMessageUnreadable(f"unsupported notification {name}")


def _read_camt054(root: ET.Element) -> list[BankEvent]:
    r = _Reader(root)
    container = r.find(root, "BkToCstmrDbtCdtNtfctn")
    if container is None:
        raise RailMessageUnreadable("BkToCstmrDbtCdtNtfctn is required")
    message_id = r.required(container, "GrpHdr/MsgId")
    events: list[BankEvent] = []
    for notification in r.all(container, "Ntfctn"):
        for entry in r.all(notification, "Ntry"):
            events.extend(_entry_events(r, entry, message_id))
    return events


def _entry_events(r: _Reader, entry: ET.Element, message_id: str) -> list[BankEvent]:
    if r.status(entry) != "BOOK":
        log.info("bank_entry_skipped", reason="not booked", message_id=message_id)
        return []
    direction = r.required(entry, "CdtDbtInd")
    booked_on = r.day(entry, "BookgDt")
    reference = r.text(entry, "AcctSvcrRef") or r.text(entry, "NtryRef")
    details = r.all(entry, "NtryDtls/TxDtls")
    events: list[BankEvent] = []
    for tx in details:
        end_to_end_id = r.text(tx, "Refs/EndToEndId")
        return_reason = r.text(tx, "RtrInf/Rsn/Cd")
        if direction == "DBIT":
            kind = BankEventKind.BOOKED
        elif direction == "CRDT" and return_reason is not None:
            kind = BankEventKind.RETURNED
        else:
            log.info("bank_entry_skipped", reason="credit that is no return", message_id=message_id)
            continue
        if end_to_end_id is None or end_to_end_id == "NOTPROVIDED":
            log.info("bank_entry_skipped", reason="no EndToEndId", message_id=message_id)
            continue
        events.append(
            BankEvent(
                kind=kind,
                end_to_end_id=end_to_end_id,
                amount=_tx_amount(r, entry, tx, single=len(details) == 1),
                reason_code=return_reason,
                booked_on=booked_on,
                entry_reference=reference,
                message_id=message_id,
            )
        )
    return events


def _tx_amount(r: _Reader, entry: ET.Element, tx: ET.Element, *, single: bool) -> Money:
    """The amount of one transaction of an entry: its own, or the entry's when it is alone."""
    for path in ("AmtDtls/TxAmt/Amt", "AmtDtls/InstdAmt/Amt", "Amt"):
        if r.find(tx, path) is not None:
            return r.amount(tx, path)
    if single:
        return r.amount(entry, "Amt")
    raise RailMessageUnreadable("a batch entry without transaction amounts")


def parse_camt053(body: bytes) -> Statement:
    """Read a camt.053 statement; balances are checked against the entries.

    Raises RailMessageUnreadable, including when closing != opening + entries: a statement
    that does not add up must not be reconciled as if it did.
    """
    name, root = parse_document(body)
    if not name.startswith("camt.053."):
        raise RailMessageUnreadable(f"expected a camt.053, got {name}")
    r = _Reader(root)
    container = r.find(root, "BkToCstmrStmt")
    if container is None:
        raise RailMessageUnreadable("BkToCstmrStmt is required")
    accounts = tuple(_account_statement(r, stmt) for stmt in r.all(container, "Stmt"))
    return Statement(statement_id=r.required(container, "GrpHdr/MsgId"), accounts=accounts)


def _balance(r: _Reader, stmt: ET.Element, codes: tuple[str, ...]) -> Money | None:
    for bal in r.all(stmt, "Bal"):
        if r.text(bal, "Tp/CdOrPrtry/Cd") in codes:
            sign = -1 if r.required(bal, "CdtDbtInd") == "DBIT" else 1
            return r.amount(bal, "Amt", signed=sign)
    return None


def _account_statement(r: _Reader, stmt: ET.Element) -> AccountStatement:
    iban = r.required(stmt, "Acct/Id/IBAN")
    entries: list[StatementEntry] = []
    for entry in r.all(stmt, "Ntry"):
        if r.status(entry) != "BOOK":
            continue
        direction = r.required(entry, "CdtDbtInd")
        booked_on = r.day(entry, "BookgDt") or r.day(entry, "ValDt")
        if booked_on is None:
            raise RailMessageUnreadable("a booked entry without a booking date")
        entries.append(
            StatementEntry(
                entry_reference=r.text(entry, "AcctSvcrRef") or r.required(entry, "NtryRef"),
                amount=r.amount(entry, "Amt"),
                direction=EntryDirection.DEBIT if direction == "DBIT" else EntryDirection.CREDIT,
                booked_on=booked_on,
                end_to_end_id=r.text(entry, "NtryDtls/TxDtls/Refs/EndToEndId"),
                return_reason=r.text(entry, "NtryDtls/TxDtls/RtrInf/Rsn/Cd"),
            )
        )
    opening = _balance(r, stmt, ("OPBD", "PRCD"))
    closing = _balance(r, stmt, ("CLBD",))
    currency = r.text(stmt, "Acct/Ccy") or (opening.currency if opening else None)
    if currency is None:
        raise RailMessageUnreadable("statement currency unknown")
    opening = opening or Money(0, currency)
    if any(e.amount.currency != currency for e in entries) or opening.currency != currency:
        raise RailMessageUnreadable("an entry or balance in another currency than its account")
    moved = sum(e.amount.amount_minor * (1 if e.direction is EntryDirection.CREDIT else -1) for e in entries)
    expected = Money(opening.amount_minor + moved, currency)
    if closing is not None and closing != expected:
        raise RailMessageUnreadable(f"closing balance {closing} != opening plus entries {expected}")
    return AccountStatement(
        account_iban=iban,
        currency=currency,
        opening_balance=opening,
        closing_balance=expected,
        entries=tuple(entries),
    )
