"""The test tiers, and what each needs.

Plain ``pytest`` in a fresh clone (only ``requirements-dev.txt`` installed) runs the
CPython tier: ``tests/unit`` (the pure core, the conversation state machine, codecs,
vectors) and ``tests/relay`` (the relay server on SQLite; on PostgreSQL too when
``PING_RELAY_TEST_POSTGRES`` names a database). The other tiers need what ``./build.sh``
builds and are skipped, with the reason, until it exists:

* ``tests/pyodide``: real OpenMLS in real wasm under Pyodide (``dist/pyodide``), in Node
  by default or ``--runtime chrome``;
* ``tests/browser``: the web demo and tabs in headless Chromium (``dist/pyodide``);
* ``tests/lite``: the JupyterLite notebook and the guide's pages (``dist/lite``).

``./build.sh test`` builds everything, then runs every tier.

Every tier sends traffic only to loopback: ``tools/loopback.py`` refuses any other address
from this process (an audit hook on connect, sendto and name lookups), and a test that tried
fails here even if something caught the refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import loopback  # the repository root is on pytest's pythonpath

loopback.install_guard()
ROOT = Path(__file__).resolve().parents[1]
NEEDS: dict[str, tuple[Path, str]] = {
    "pyodide": (ROOT / "dist" / "pyodide" / "pyodide-lock.json", "dist/pyodide is not built: run ./build.sh build"),
    "browser": (ROOT / "dist" / "pyodide" / "pyodide-lock.json", "dist/pyodide is not built: run ./build.sh build"),
    "lite": (ROOT / "dist" / "lite" / "jupyter-lite.json", "dist/lite is not built: run ./build.sh lite"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(item.path).relative_to(ROOT).parts
        if len(parts) > 2 and parts[0] == "tests" and parts[1] in NEEDS:
            needed, reason = NEEDS[parts[1]]
            if not needed.exists():
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def only_loopback() -> Iterator[None]:
    """Fail a test that tried to reach anything but loopback (``tools/loopback.py``)."""
    loopback.take_violations()
    yield
    if tried := loopback.take_violations():
        pytest.fail(f"traffic to a non-loopback address: {tried}", pytrace=False)
