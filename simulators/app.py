"""FastAPI surface of the simulator: `/bank`, `/card` and `/control` on one app.

Handlers are thin: they read the raw body, hand it to the `Simulator` in a worker thread
(the engine may sleep to simulate a timeout, which must not block the event loop) and copy
the `Reply` onto the wire. Only "drop the connection" needs ASGI-level work, done by
`DroppedConnectionResponse`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from simulators.clock import ClockError
from simulators.engine import (
    PROBLEM,
    MoneyIn,
    Reply,
    Simulator,
    SimulatorConfig,
    problem,
)
from simulators.faults import ActiveFault, FaultRule
from simulators.money import MoneyError, currency_exponent

log = structlog.get_logger("simulators")


class SimulatedConnectionDrop(httpx.RemoteProtocolError):
    """Raised after the response headers were sent, to cut the connection mid-response.

    It subclasses httpx's own "peer closed the connection" error so that an in-process
    client (TestClient or ASGITransport, which re-raise app exceptions) sees the same
    exception class as a client talking to uvicorn over a socket, where the connection is
    really closed without a complete body.
    """


class DroppedConnectionResponse(Response):
    """Start a response, then break it off: the client cannot know what happened."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No content-length: the server announces a chunked body it never finishes, so a
        # socket client sees the connection close mid-response, not an empty 200.
        headers = [(k, v) for k, v in self.raw_headers if k.lower() != b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise SimulatedConnectionDrop("simulated: connection dropped after processing")


def to_response(reply: Reply) -> Response:
    """Copy an engine `Reply` onto an HTTP response."""
    if reply.drop_connection:
        return DroppedConnectionResponse(content=b"", media_type=reply.media_type)
    return Response(
        content=reply.body,
        status_code=reply.status_code,
        media_type=reply.media_type,
        headers=reply.headers,
    )


class ClockMove(BaseModel):
    """Body of `POST /control/clock`: exactly one of `advance_s` or `now`."""

    model_config = ConfigDict(extra="forbid")

    advance_s: float | None = Field(default=None, ge=0.0, le=10 * 366 * 86400.0)
    now: datetime | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ClockMove:
        if (self.advance_s is None) == (self.now is None):
            raise ValueError("give exactly one of advance_s or now")
        return self


class ReturnRequest(BaseModel):
    """Body of `POST /control/bank/returns`."""

    model_config = ConfigDict(extra="forbid")

    end_to_end_id: str = Field(min_length=1, max_length=35)
    reason_code: str = Field(default="AC04", pattern=r"^[A-Z0-9]{4}$")
    additional_info: str | None = Field(default=None, max_length=105)


class ChargebackRequest(BaseModel):
    """Body of `POST /control/card/chargebacks`."""

    model_config = ConfigDict(extra="forbid")

    payment_reference: str = Field(min_length=1, max_length=140)
    amount: MoneyIn
    reason_code: str = Field(default="10.4", min_length=1, max_length=16)


def _problem_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status_code, media_type=PROBLEM)


def _ticker(simulator: Simulator, interval_s: float, stop: threading.Event) -> None:
    """Tick on wall time when served standalone; a failed tick is logged, never fatal."""
    while not stop.wait(interval_s):
        try:
            simulator.tick()
        except Exception:  # a broken tick must not kill the ticker of a long-running demo
            log.exception("tick_failed")


def create_app(config: SimulatorConfig | None = None) -> FastAPI:
    """Build the simulator app; `app.state.simulator` is the engine behind it.

    A background ticker runs only when `config.tick_interval_s` is set and the app's
    lifespan runs (uvicorn, or `with TestClient(app)`); tests normally leave it off and
    call `POST /control/tick` after moving the clock.
    """
    simulator = Simulator(config or SimulatorConfig())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread: threading.Thread | None = None
        interval_s = simulator.config.tick_interval_s
        if interval_s is not None:
            thread = threading.Thread(
                target=_ticker,
                args=(simulator, interval_s, stop),
                name="simulator-ticker",
                daemon=True,
            )
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5.0)
            simulator.close()

    app = FastAPI(title="Bank and card acquirer simulator", version="1", lifespan=lifespan)
    app.state.simulator = simulator

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": ".".join(str(p) for p in err.get("loc", ())), "message": str(err.get("msg"))}
            for err in exc.errors()
        ]
        return _problem_response(problem(422, "validation_error", "invalid request", errors=errors))

    app.include_router(_bank_router(simulator), prefix="/bank")
    app.include_router(_card_router(simulator), prefix="/card")
    app.include_router(_control_router(simulator), prefix="/control")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness for harnesses that wait for the simulator to be up."""
        return {"status": "ok"}

    return app


def _bank_router(simulator: Simulator) -> APIRouter:
    router = APIRouter(tags=["bank"])

    @router.post("/v1/credit-transfers")
    async def submit_credit_transfers(request: Request) -> Response:
        """Accept a pain.001 (XML body); answer a pain.002."""
        body = await request.body()
        return to_response(await run_in_threadpool(simulator.submit_credit_transfers, body))

    @router.get("/v1/credit-transfers/{end_to_end_id}")
    def transfer_status(end_to_end_id: str) -> Response:
        """Status of one transfer as a pain.002, or 404 if never received."""
        return to_response(simulator.transfer_status(end_to_end_id))

    @router.get("/v1/statements")
    def statement(
        on: Annotated[date | None, Query(alias="date")] = None,
        date_from: Annotated[date | None, Query(alias="from")] = None,
        date_to: Annotated[date | None, Query(alias="to")] = None,
        account: Annotated[str | None, Query(max_length=34)] = None,
    ) -> Response:
        """camt.053 of the entries booked on `date`, or from `from` to `to` inclusive."""
        if on is not None and (date_from is not None or date_to is not None):
            return to_response(problem(422, "validation_error", "use date, or from and to"))
        if on is not None:
            date_from = date_to = on
        if date_from is None or date_to is None:
            return to_response(problem(422, "validation_error", "date, or from and to, required"))
        return to_response(simulator.statement(date_from, date_to, account))

    return router


def _card_router(simulator: Simulator) -> APIRouter:
    router = APIRouter(tags=["card"])

    @router.post("/v1/refunds")
    async def create_refund(
        request: Request,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Response:
        """Refund to the original card; idempotent on the Idempotency-Key header."""
        body = await request.body()
        reply = await run_in_threadpool(simulator.create_refund, body, idempotency_key)
        return to_response(reply)

    @router.get("/v1/refunds/{refund_id}")
    def refund_status(refund_id: str) -> Response:
        """The refund (`pending`, `succeeded` or `failed`), or 404."""
        return to_response(simulator.refund_status(refund_id))

    @router.get("/v1/settlement-report")
    def settlement_report(
        on: Annotated[date, Query(alias="date")],
        report_format: Annotated[str | None, Query(alias="format", pattern="^(json|csv)$")] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Refunds and chargebacks settled on `date`; CSV with format=csv or Accept: text/csv."""
        as_csv = report_format == "csv" or (report_format is None and accept is not None and "text/csv" in accept)
        return to_response(simulator.settlement_report(on, as_csv))

    return router


def _control_router(simulator: Simulator) -> APIRouter:
    router = APIRouter(tags=["control"])

    @router.post("/faults", status_code=201)
    def add_fault(rule: FaultRule) -> ActiveFault:
        """Inject a fault: see README.md for operations and fault kinds."""
        return simulator.faults.add(rule)

    @router.get("/faults")
    def list_faults() -> list[ActiveFault]:
        """Fault rules still in force."""
        return simulator.faults.list()

    @router.delete("/faults", status_code=204)
    def clear_faults() -> Response:
        """Remove every fault rule."""
        simulator.faults.clear()
        return Response(status_code=204)

    @router.delete("/faults/{fault_id}", status_code=204)
    def remove_fault(fault_id: str) -> Response:
        """Remove one fault rule."""
        if not simulator.faults.remove(fault_id):
            return to_response(problem(404, "fault_not_found", "no such fault rule"))
        return Response(status_code=204)

    @router.get("/clock")
    def read_clock() -> dict[str, Any]:
        """The simulator's current time."""
        return {"now": simulator.clock.now().isoformat()}

    @router.post("/clock")
    def move_clock(move: ClockMove) -> Response:
        """Move the clock forward (never back); due work happens at the next tick."""
        try:
            now = simulator.move_clock(move.advance_s, move.now)
        except ClockError as exc:
            return to_response(problem(422, "clock_backwards", str(exc)))
        return JSONResponse({"now": now.isoformat()})

    @router.post("/tick")
    def tick() -> dict[str, int]:
        """Settle what is due and deliver due callbacks, synchronously."""
        report = simulator.tick()
        return {
            "settled": report.settled,
            "returned": report.returned,
            "chargebacks": report.chargebacks,
            "callbacks_delivered": report.callbacks_delivered,
            "callbacks_failed": report.callbacks_failed,
        }

    @router.get("/ledger")
    @router.get("/books")
    def ledger() -> dict[str, Any]:
        """The simulator's books: every instruction, its executions and totals per currency."""
        return simulator.ledger()

    @router.get("/callbacks")
    def callbacks() -> list[dict[str, Any]]:
        """Every callback with its delivery state."""
        return simulator.callbacks()

    @router.post("/bank/returns")
    def bank_return(body: ReturnRequest) -> Response:
        """The creditor bank returns a settled transfer now."""
        return to_response(simulator.return_transfer(body.end_to_end_id, body.reason_code, body.additional_info))

    @router.post("/card/chargebacks", status_code=201)
    def card_chargeback(body: ChargebackRequest) -> Response:
        """The acquirer raises a chargeback on a payment now."""
        try:
            currency_exponent(body.amount.currency)
        except MoneyError as exc:
            return to_response(problem(422, "validation_error", str(exc)))
        chargeback = simulator.create_chargeback(
            body.payment_reference, body.amount.amount, body.amount.currency, body.reason_code
        )
        return JSONResponse(simulator.chargeback_view(chargeback), status_code=201)

    @router.post("/reset", status_code=204)
    def reset() -> Response:
        """Forget everything but the clock."""
        simulator.reset()
        return Response(status_code=204)

    return router
