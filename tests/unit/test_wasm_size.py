"""Size gate: the shipped wasm module stays within its download budget.

Budget: at most 2.0 MB raw and 650 KB gzip (level 9), so a page that loads ping-web pays
far less than core-crypto's 7.6 MB. The module is a build output (``./build.sh build``);
without it there is nothing to measure, and the test says so instead of failing.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

WASM = Path(__file__).resolve().parents[2] / "ping_web" / "mls" / "_wasm" / "ping_web_mls_bg.wasm"
MAX_RAW = 2_000_000
MAX_GZIP = 650_000


@pytest.fixture(scope="module")
def wasm_bytes() -> bytes:
    if not WASM.is_file():
        pytest.skip(f"{WASM.relative_to(WASM.parents[2])} is not built yet: run ./build.sh build")
    return WASM.read_bytes()


def test_wasm_raw_size_within_budget(wasm_bytes: bytes) -> None:
    assert len(wasm_bytes) <= MAX_RAW, f"wasm is {len(wasm_bytes):,} bytes raw, over the {MAX_RAW:,}-byte budget"


def test_wasm_gzip_size_within_budget(wasm_bytes: bytes) -> None:
    size = len(gzip.compress(wasm_bytes, compresslevel=9))
    assert size <= MAX_GZIP, f"wasm is {size:,} bytes gzip -9, over the {MAX_GZIP:,}-byte budget"
