"""The bank's wire format: read pain.001, write pain.002, camt.054 and camt.053.

Parsing is guarded: `defusedxml` refuses DTDs, entities and external references before any
element is built (billion-laughs and XXE are the classic attacks on XML payment files), and
the parsed tree is then validated against the official pain.001 XSD bundled with `sepaxml`,
so a client that produces a structurally wrong file gets a 400 here instead of a simulator
that guesses. Writing uses the standard library builder, which never parses anything.

Versions: pain.001.001.03 and pain.001.001.09 are accepted. Reports are written as
pain.002.001.03, camt.054.001.02 and camt.053.001.02 (the SEPA-era versions whose
`Sts` is a plain code), whatever the pain.001 version was.
"""

from __future__ import annotations

import functools
import importlib.resources
import xml.etree.ElementTree as ET  # only to build documents; parsing goes through defusedxml
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

import defusedxml  # type: ignore[import-untyped]  # no stubs published; checked by tests
import defusedxml.ElementTree as DET  # type: ignore[import-untyped]  # same reason as above
import xmlschema

from simulators.money import minor_to_decimal_str

PAIN001_SCHEMAS = {
    "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03": "pain.001.001.03",
    "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09": "pain.001.001.09",
}
PAIN002_NS = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.03"
CAMT054_NS = "urn:iso:std:iso:20022:tech:xsd:camt.054.001.02"
CAMT053_NS = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"
TRANSACTIONS_PER_MESSAGE_MAX = 1000
SCHEMA_ERROR_CHARS_MAX = 500


class WireError(ValueError):
    """A document the bank cannot read at all (answered 400); `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CreditTransferTx:
    """One CdtTrfTxInf of a pain.001, with the fields of its PmtInf it depends on."""

    end_to_end_id: str
    amount_text: str
    currency: str
    creditor_name: str
    creditor_iban: str
    creditor_bic: str | None
    remittance: str
    debtor_name: str
    debtor_iban: str
    debtor_bic: str | None
    pmt_inf_id: str
    requested_execution_date: str | None


@dataclass(frozen=True, slots=True)
class Pain001:
    """A parsed credit transfer initiation."""

    schema: str
    msg_id: str
    transactions: tuple[CreditTransferTx, ...]


@dataclass(frozen=True, slots=True)
class TxStatus:
    """One line of a pain.002: the status of one transaction."""

    end_to_end_id: str
    pmt_inf_id: str
    status: str  # ACSP, ACSC or RJCT
    amount_text: str
    currency: str
    reason_code: str | None = None
    additional_info: str | None = None


@dataclass(frozen=True, slots=True)
class CamtEntry:
    """One booked entry (Ntry) of a camt.054 notification or camt.053 statement."""

    entry_ref: str
    amount_minor: int
    currency: str
    credit_debit: str  # DBIT for an executed transfer, CRDT for its return
    booked_at: datetime
    sub_family: str  # ESCT (SEPA credit transfer) or RRTN (reversal due to return)
    end_to_end_id: str
    msg_id: str
    pmt_inf_id: str
    creditor_name: str
    creditor_iban: str
    remittance: str
    return_reason: str | None = None
    return_info: str | None = None


@dataclass(frozen=True, slots=True)
class AccountStatement:
    """One Stmt of a camt.053: an account in one currency over a date range."""

    statement_id: str
    sequence: int
    account_iban: str
    currency: str
    from_at: datetime
    to_at: datetime
    opening_minor: int  # signed: positive is a credit balance
    entries: tuple[CamtEntry, ...]

    @property
    def closing_minor(self) -> int:
        """Opening balance plus credits minus debits of the period."""
        delta = sum(e.amount_minor if e.credit_debit == "CRDT" else -e.amount_minor for e in self.entries)
        return self.opening_minor + delta


@functools.cache
def _schema(name: str) -> xmlschema.XMLSchema:
    """Load (once per process) the official XSD that sepaxml ships for `name`."""
    path = importlib.resources.files("sepaxml") / "schemas" / f"{name}.xsd"
    return xmlschema.XMLSchema(str(path))


def _q(ns: str, path: str) -> str:
    """Qualify every step of a slash-separated path with namespace `ns`."""
    return "/".join(f"{{{ns}}}{step}" for step in path.split("/"))


def _text(el: ET.Element, ns: str, path: str) -> str | None:
    found = el.find(_q(ns, path))
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _required(el: ET.Element, ns: str, path: str) -> str:
    value = _text(el, ns, path)
    if not value:
        raise WireError("missing_element", f"{path} is required")
    return value


def parse_pain001(body: bytes) -> Pain001:
    """Parse and validate a pain.001 credit transfer initiation.

    Raises WireError with code `malformed_xml` (not well-formed, or a DTD/entity was
    present), `unsupported_message` (another root or namespace), `schema_invalid`
    (fails the XSD), `missing_element`, `end_to_end_id_required` (absent or
    sepaxml's NOTPROVIDED: idempotency needs a real id), `duplicate_end_to_end_id`,
    `too_many_transactions`, `number_of_transactions_mismatch` or `control_sum_mismatch`.
    """
    try:
        root = DET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError) as exc:
        raise WireError("malformed_xml", f"not a well-formed XML document: {exc}") from exc
    if not isinstance(root, ET.Element) or not root.tag.startswith("{"):
        raise WireError("unsupported_message", "expected an ISO 20022 pain.001 Document")
    ns = root.tag[1:].split("}", 1)[0]
    schema_name = PAIN001_SCHEMAS.get(ns)
    if schema_name is None or root.tag != f"{{{ns}}}Document":
        raise WireError("unsupported_message", f"expected pain.001.001.03 or .09, got {ns!r}")
    error = next(iter(_schema(schema_name).iter_errors(root)), None)
    if error is not None:
        reason = str(error.reason or error)[:SCHEMA_ERROR_CHARS_MAX]
        raise WireError("schema_invalid", f"{schema_name} schema violation: {reason}")
    initiation = root.find(_q(ns, "CstmrCdtTrfInitn"))
    if initiation is None:  # the XSD already guarantees it; kept for the type checker
        raise WireError("missing_element", "CstmrCdtTrfInitn is required")
    msg_id = _required(initiation, ns, "GrpHdr/MsgId")
    bic_tag = "BIC" if schema_name == "pain.001.001.03" else "BICFI"
    transactions: list[CreditTransferTx] = []
    for pmt_inf in initiation.findall(_q(ns, "PmtInf")):
        execution_date = _text(pmt_inf, ns, "ReqdExctnDt") or _text(pmt_inf, ns, "ReqdExctnDt/Dt")
        for tx in pmt_inf.findall(_q(ns, "CdtTrfTxInf")):
            if len(transactions) >= TRANSACTIONS_PER_MESSAGE_MAX:
                raise WireError(
                    "too_many_transactions",
                    f"at most {TRANSACTIONS_PER_MESSAGE_MAX} transactions per message",
                )
            amount = tx.find(_q(ns, "Amt/InstdAmt"))
            if amount is None or not amount.text:
                raise WireError("missing_element", "Amt/InstdAmt is required")
            transactions.append(
                CreditTransferTx(
                    end_to_end_id=_required(tx, ns, "PmtId/EndToEndId"),
                    amount_text=amount.text.strip(),
                    currency=amount.get("Ccy", ""),
                    creditor_name=_text(tx, ns, "Cdtr/Nm") or "",
                    creditor_iban=_required(tx, ns, "CdtrAcct/Id/IBAN"),
                    creditor_bic=_text(tx, ns, f"CdtrAgt/FinInstnId/{bic_tag}"),
                    remittance=_text(tx, ns, "RmtInf/Ustrd") or "",
                    debtor_name=_text(pmt_inf, ns, "Dbtr/Nm") or "",
                    debtor_iban=_required(pmt_inf, ns, "DbtrAcct/Id/IBAN"),
                    debtor_bic=_text(pmt_inf, ns, f"DbtrAgt/FinInstnId/{bic_tag}"),
                    pmt_inf_id=_required(pmt_inf, ns, "PmtInfId"),
                    requested_execution_date=execution_date,
                )
            )
    _check_group_header(initiation, ns, transactions)
    return Pain001(schema=schema_name, msg_id=msg_id, transactions=tuple(transactions))


def _check_group_header(initiation: ET.Element, ns: str, transactions: Sequence[CreditTransferTx]) -> None:
    """Reject a file whose header totals disagree with its content (a truncated file)."""
    seen: set[str] = set()
    for tx in transactions:
        if tx.end_to_end_id == "NOTPROVIDED":
            raise WireError(
                "end_to_end_id_required",
                "EndToEndId NOTPROVIDED: the simulator is idempotent on EndToEndId",
            )
        if tx.end_to_end_id in seen:
            raise WireError("duplicate_end_to_end_id", f"EndToEndId {tx.end_to_end_id} appears twice")
        seen.add(tx.end_to_end_id)
    declared = _required(initiation, ns, "GrpHdr/NbOfTxs")
    if int(declared) != len(transactions):
        raise WireError(
            "number_of_transactions_mismatch",
            f"GrpHdr/NbOfTxs is {declared} but the message holds {len(transactions)}",
        )
    ctrl_sum = _text(initiation, ns, "GrpHdr/CtrlSum")
    if ctrl_sum is not None:
        try:
            total = sum((Decimal(tx.amount_text) for tx in transactions), Decimal(0))
            matches = Decimal(ctrl_sum) == total
        except InvalidOperation as exc:
            raise WireError("control_sum_mismatch", "CtrlSum or an amount is not decimal") from exc
        if not matches:
            raise WireError("control_sum_mismatch", f"GrpHdr/CtrlSum is {ctrl_sum} but amounts sum to {total}")


# --- writing -----------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _document(ns: str) -> ET.Element:
    # The default namespace is written as a plain attribute (as sepaxml does) so that the
    # global ElementTree namespace registry is never touched from a server thread.
    return ET.Element("Document", {"xmlns": ns})


def _serialize(root: ET.Element) -> bytes:
    out = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    if not isinstance(out, bytes):  # tostring's stubs say Any; with an encoding it is bytes
        raise TypeError("ElementTree returned text for an encoded document")
    return out


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def group_status(statuses: Iterable[str]) -> str:
    """Group status of a pain.002: the common status, PART if some were rejected."""
    distinct = set(statuses)
    if len(distinct) == 1:
        return distinct.pop()
    if "RJCT" in distinct:
        return "PART"
    return "ACSP"


def render_pain002(
    *,
    msg_id: str,
    created_at: datetime,
    original_msg_id: str,
    original_schema: str,
    transactions: Sequence[TxStatus],
) -> bytes:
    """Write a pain.002.001.03 status report for `transactions`, grouped by PmtInfId."""
    root = _document(PAIN002_NS)
    report = _sub(root, "CstmrPmtStsRpt")
    header = _sub(report, "GrpHdr")
    _sub(header, "MsgId", msg_id)
    _sub(header, "CreDtTm", _iso(created_at))
    original = _sub(report, "OrgnlGrpInfAndSts")
    _sub(original, "OrgnlMsgId", original_msg_id)
    _sub(original, "OrgnlMsgNmId", original_schema)
    _sub(original, "GrpSts", group_status(t.status for t in transactions))
    by_pmt_inf: dict[str, list[TxStatus]] = {}
    for tx in transactions:
        by_pmt_inf.setdefault(tx.pmt_inf_id, []).append(tx)
    for pmt_inf_id, txs in by_pmt_inf.items():
        pmt = _sub(report, "OrgnlPmtInfAndSts")
        _sub(pmt, "OrgnlPmtInfId", pmt_inf_id)
        for tx in txs:
            line = _sub(pmt, "TxInfAndSts")
            _sub(line, "OrgnlEndToEndId", tx.end_to_end_id)
            _sub(line, "TxSts", tx.status)
            if tx.reason_code is not None or tx.additional_info is not None:
                reason_info = _sub(line, "StsRsnInf")
                if tx.reason_code is not None:
                    _sub(_sub(reason_info, "Rsn"), "Cd", tx.reason_code)
                if tx.additional_info is not None:
                    _sub(reason_info, "AddtlInf", tx.additional_info[:105])
            reference = _sub(line, "OrgnlTxRef")
            _sub(_sub(reference, "Amt"), "InstdAmt", tx.amount_text, Ccy=tx.currency)
    return _serialize(root)


def _entry(parent: ET.Element, entry: CamtEntry) -> None:
    ntry = _sub(parent, "Ntry")
    _sub(ntry, "NtryRef", entry.entry_ref)
    amount = minor_to_decimal_str(entry.amount_minor, entry.currency)
    _sub(ntry, "Amt", amount, Ccy=entry.currency)
    _sub(ntry, "CdtDbtInd", entry.credit_debit)
    _sub(ntry, "Sts", "BOOK")
    _sub(_sub(ntry, "BookgDt"), "Dt", entry.booked_at.date().isoformat())
    _sub(_sub(ntry, "ValDt"), "Dt", entry.booked_at.date().isoformat())
    _sub(ntry, "AcctSvcrRef", entry.entry_ref)
    domain = _sub(_sub(ntry, "BkTxCd"), "Domn")
    _sub(domain, "Cd", "PMNT")
    family = _sub(domain, "Fmly")
    _sub(family, "Cd", "ICDT")
    _sub(family, "SubFmlyCd", entry.sub_family)
    details = _sub(_sub(ntry, "NtryDtls"), "TxDtls")
    refs = _sub(details, "Refs")
    _sub(refs, "MsgId", entry.msg_id)
    _sub(refs, "PmtInfId", entry.pmt_inf_id)
    _sub(refs, "EndToEndId", entry.end_to_end_id)
    amount_details = _sub(_sub(details, "AmtDtls"), "InstdAmt")
    _sub(amount_details, "Amt", amount, Ccy=entry.currency)
    parties = _sub(details, "RltdPties")
    _sub(_sub(parties, "Cdtr"), "Nm", entry.creditor_name)
    _sub(_sub(_sub(parties, "CdtrAcct"), "Id"), "IBAN", entry.creditor_iban)
    if entry.remittance:
        _sub(_sub(details, "RmtInf"), "Ustrd", entry.remittance)
    if entry.return_reason is not None:
        return_info = _sub(details, "RtrInf")
        _sub(_sub(return_info, "Rsn"), "Cd", entry.return_reason)
        if entry.return_info:
            _sub(return_info, "AddtlInf", entry.return_info[:105])


def render_camt054(
    *,
    msg_id: str,
    created_at: datetime,
    account_iban: str,
    entries: Sequence[CamtEntry],
) -> bytes:
    """Write a camt.054.001.02 debit/credit notification for `entries` of one account."""
    root = _document(CAMT054_NS)
    notification_root = _sub(root, "BkToCstmrDbtCdtNtfctn")
    header = _sub(notification_root, "GrpHdr")
    _sub(header, "MsgId", msg_id)
    _sub(header, "CreDtTm", _iso(created_at))
    notification = _sub(notification_root, "Ntfctn")
    _sub(notification, "Id", msg_id)
    _sub(notification, "CreDtTm", _iso(created_at))
    account = _sub(notification, "Acct")
    _sub(_sub(account, "Id"), "IBAN", account_iban)
    for entry in entries:
        _entry(notification, entry)
    return _serialize(root)


def _balance(parent: ET.Element, code: str, amount_minor: int, currency: str, at: datetime) -> None:
    balance = _sub(parent, "Bal")
    _sub(_sub(_sub(balance, "Tp"), "CdOrPrtry"), "Cd", code)
    _sub(balance, "Amt", minor_to_decimal_str(abs(amount_minor), currency), Ccy=currency)
    _sub(balance, "CdtDbtInd", "CRDT" if amount_minor >= 0 else "DBIT")
    _sub(_sub(balance, "Dt"), "Dt", at.date().isoformat())


def _summary(parent: ET.Element, tag: str, entries: Sequence[CamtEntry], currency: str) -> None:
    node = _sub(parent, tag)
    _sub(node, "NbOfNtries", str(len(entries)))
    total = sum(e.amount_minor for e in entries)
    _sub(node, "Sum", minor_to_decimal_str(total, currency))


def render_camt053(*, msg_id: str, created_at: datetime, statements: Sequence[AccountStatement]) -> bytes:
    """Write a camt.053.001.02 statement document, one Stmt per account and currency."""
    root = _document(CAMT053_NS)
    statement_root = _sub(root, "BkToCstmrStmt")
    header = _sub(statement_root, "GrpHdr")
    _sub(header, "MsgId", msg_id)
    _sub(header, "CreDtTm", _iso(created_at))
    for statement in statements:
        stmt = _sub(statement_root, "Stmt")
        _sub(stmt, "Id", statement.statement_id)
        _sub(stmt, "ElctrncSeqNb", str(statement.sequence))
        _sub(stmt, "CreDtTm", _iso(created_at))
        period = _sub(stmt, "FrToDt")
        _sub(period, "FrDtTm", _iso(statement.from_at))
        _sub(period, "ToDtTm", _iso(statement.to_at))
        account = _sub(stmt, "Acct")
        _sub(_sub(account, "Id"), "IBAN", statement.account_iban)
        _sub(account, "Ccy", statement.currency)
        _balance(stmt, "OPBD", statement.opening_minor, statement.currency, statement.from_at)
        _balance(stmt, "CLBD", statement.closing_minor, statement.currency, statement.to_at)
        summary = _sub(stmt, "TxsSummry")
        _summary(summary, "TtlNtries", statement.entries, statement.currency)
        credits = [e for e in statement.entries if e.credit_debit == "CRDT"]
        debits = [e for e in statement.entries if e.credit_debit == "DBIT"]
        _summary(summary, "TtlCdtNtries", credits, statement.currency)
        _summary(summary, "TtlDbtNtries", debits, statement.currency)
        for entry in statement.entries:
            _entry(stmt, entry)
    return _serialize(root)
