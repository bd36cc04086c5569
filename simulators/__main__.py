"""`python -m simulators`: serve the bank and card acquirer simulator with uvicorn."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from simulators.app import create_app
from simulators.clock import SimClock
from simulators.engine import SimulatorConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; durations in seconds."""
    parser = argparse.ArgumentParser(prog="python -m simulators", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--webhook-url",
        help="base URL: bank callbacks go to {url}/bank, card callbacks to {url}/card",
    )
    parser.add_argument("--bank-webhook-url", help="overrides --webhook-url for the bank")
    parser.add_argument("--card-webhook-url", help="overrides --webhook-url for the card rail")
    parser.add_argument("--webhook-secret", help="whsec_... used for both rails")
    parser.add_argument("--bank-webhook-secret")
    parser.add_argument("--card-webhook-secret")
    parser.add_argument("--settle-delay-s", type=float, default=5.0)
    parser.add_argument("--return-delay-s", type=float, default=60.0)
    parser.add_argument("--card-settle-delay-s", type=float, default=5.0)
    parser.add_argument("--chargeback-delay-s", type=float, default=60.0)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="length of a timeout")
    parser.add_argument("--slow-s", type=float, default=2.0, help="length of a slow response")
    parser.add_argument("--tick-interval-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of probabilistic faults")
    parser.add_argument("--no-magic", action="store_true", help="disable magic input values")
    parser.add_argument("--state-file", type=Path, help="persist the books to this JSON file")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the configuration a standalone run uses: wall clock, background ticker."""
    base = args.webhook_url.rstrip("/") if args.webhook_url else None
    return SimulatorConfig(
        clock=SimClock.wall(),
        bank_webhook_url=args.bank_webhook_url or (f"{base}/bank" if base else None),
        card_webhook_url=args.card_webhook_url or (f"{base}/card" if base else None),
        bank_webhook_secret=args.bank_webhook_secret or args.webhook_secret,
        card_webhook_secret=args.card_webhook_secret or args.webhook_secret,
        settle_delay_s=args.settle_delay_s,
        return_delay_s=args.return_delay_s,
        card_settle_delay_s=args.card_settle_delay_s,
        chargeback_delay_s=args.chargeback_delay_s,
        timeout_s=args.timeout_s,
        slow_s=args.slow_s,
        tick_interval_s=args.tick_interval_s,
        seed=args.seed,
        magic_values=not args.no_magic,
        state_path=args.state_file,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator until interrupted."""
    args = parse_args(argv)
    uvicorn.run(create_app(config_from_args(args)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
