"""A bank (ISO 20022) and a card acquirer (JSON), simulated for tests and demos.

Independent of `escrow` and `adapters` on purpose: see README.md in this directory.
"""

from simulators.app import DroppedConnectionResponse, SimulatedConnectionDrop, create_app
from simulators.clock import Clock, SimClock
from simulators.engine import Reply, Simulator, SimulatorConfig, TickReport
from simulators.faults import FaultRule, Magic
from simulators.webhooks import CallbackRequest, CallbackSender, RecordingSender

__all__ = [
    "CallbackRequest",
    "CallbackSender",
    "Clock",
    "DroppedConnectionResponse",
    "FaultRule",
    "Magic",
    "RecordingSender",
    "Reply",
    "SimClock",
    "SimulatedConnectionDrop",
    "Simulator",
    "SimulatorConfig",
    "TickReport",
    "create_app",
]
