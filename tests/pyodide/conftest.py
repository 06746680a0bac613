"""pytest-pyodide setup: tests here run inside Pyodide (Node by default) against dist/."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist" / "pyodide"


def pytest_configure(config: pytest.Config) -> None:
    if not (DIST / "pyodide-lock.json").exists():
        raise pytest.UsageError("dist/pyodide is missing: run ./build.sh build first")


def pytest_sessionstart(session: pytest.Session) -> None:
    from pytest_pyodide import get_global_config

    # Node runs Pyodide in a vm context that only sees the globals listed here;
    # OpenMLS draws randomness from crypto.getRandomValues.
    get_global_config().add_node_extra_globals(["crypto"])
