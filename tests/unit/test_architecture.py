"""Dependencies flow one way (CONVENTIONS.md); an `ast` walk keeps it true."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_of(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_simulators_import_nothing_of_the_service() -> None:
    """The simulator is a black box: a shared misunderstanding of a wire format must fail a test."""
    for path, names in imports_of("simulators").items():
        assert not any(n.split(".")[0] in {"escrow", "adapters"} for n in names), path


def test_adapters_import_only_money_and_ports() -> None:
    for path, names in imports_of("adapters").items():
        bad = {
            n
            for n in names
            if n.split(".")[0] == "escrow" and n not in {"escrow.money", "escrow.ports", "escrow.errors"}
        }
        assert not bad, (path, bad)


def test_core_never_imports_the_web_framework_or_adapters() -> None:
    """Money, errors, ledger, screening and domain know nothing of FastAPI or concrete adapters."""
    core = ("escrow/money.py", "escrow/errors.py", "escrow/ledger/", "escrow/screening/", "escrow/domain/")
    for path, names in imports_of("escrow").items():
        if path.startswith(core):
            assert not any(n.split(".")[0] in {"fastapi", "starlette", "adapters", "simulators"} for n in names), path
