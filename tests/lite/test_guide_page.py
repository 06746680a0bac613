"""The page and worker examples of docs/guide.md work in headless Chromium, as written.

The blocks marked ``<!-- guide: file NAME -->`` are written to test-output/guide/NAME, the
repository root is served on localhost (so ``/dist/pyodide/`` is the built Pyodide), and
each page marked ``<!-- guide: output NAME -->`` must show exactly that text in its
``#log``. Needs dist/pyodide (``./build.sh build``).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide.md"
OUT = ROOT / "test-output" / "guide"
TIMEOUT_S = float(os.environ.get("PING_LITE_TIMEOUT", "240"))
STABLE_S = 5.0
_BLOCK = re.compile(r"(?:^<!-- guide: (?P<marker>.*?) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.S | re.M)


def _marked(kind: str) -> dict[str, str]:
    """``{NAME: text}`` of the blocks marked ``<!-- guide: KIND NAME -->``."""
    found = {}
    for match in _BLOCK.finditer(GUIDE.read_text()):
        marker = (match["marker"] or "").split()
        if len(marker) == 2 and marker[0] == kind:
            found[marker[1]] = match["body"]
    return found


FILES = _marked("file")
OUTPUTS = _marked("output")


def test_the_guide_has_pages():
    assert {"page.html", "worker.html", "worker.mjs"} <= FILES.keys()
    assert OUTPUTS.keys() <= FILES.keys() and {"page.html", "worker.html"} <= OUTPUTS.keys()


@pytest.fixture(scope="module")
def pages() -> Path:
    if not (ROOT / "dist" / "pyodide" / "pyodide-lock.json").exists():
        pytest.fail("dist/pyodide is missing: run ./build.sh build")
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (OUT / name).write_text(text)
    return OUT


@pytest.mark.parametrize("page", sorted(OUTPUTS))
def test_guide_page(page: str, pages: Path, server, driver, console) -> None:
    base, served = server
    expected = OUTPUTS[page]
    driver.get(f"{base}/test-output/guide/{page}")
    deadline = time.monotonic() + TIMEOUT_S
    initial = shown = driver.execute_script("return document.getElementById('log').textContent")
    changed = time.monotonic()
    while time.monotonic() < deadline and shown != expected:
        time.sleep(0.3)
        now = driver.execute_script("return document.getElementById('log').textContent")
        if now != shown:
            shown, changed = now, time.monotonic()
        elif shown != initial and time.monotonic() - changed > STABLE_S:
            break  # the page has settled on something else
    driver.save_screenshot(str(pages / f"{page}.png"))
    assert shown == expected, f"{page} shows {shown!r}, not {expected!r}\n--- browser console ---\n{console()}"
    assert "/dist/pyodide/ping_web-0.1.0-py3-none-any.whl" in served
