"""--static: the relay also serves an app's files (the demo), and the API stays exactly as it was."""

from __future__ import annotations

from pathlib import Path

import httpx


def test_static_files_beside_the_api(spawn, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "web").mkdir(parents=True)
    (site / "web" / "index.html").write_text("<h1>app</h1>")
    (site / "web" / "worker.mjs").write_text("export {};")
    (site / "web" / "m.wasm").write_bytes(b"\x00asm")
    relay = spawn("--static", f"/web={site / 'web'}", "--index", "/web/")
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        page = http.get("/web/")
        assert page.status_code == 200 and page.text == "<h1>app</h1>"
        assert page.headers["cache-control"] == "no-store"
        assert http.get("/web/worker.mjs").headers["content-type"].startswith("text/javascript")
        assert http.get("/web/m.wasm").headers["content-type"] == "application/wasm"
        assert http.get("/").headers["location"].endswith("/web/")
        assert http.get("/web").status_code in (307, 308)
        assert http.post("/web/index.html").status_code == 405
        missing = http.get("/web/nope.js")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert http.get("/elsewhere").status_code == 404
        # The API is untouched: its own 404 and 405, never a file.
        assert http.get("/v1/info").json()["protocol"] == 1
        assert http.get("/v1/nope").json()["error"] == "not_found"
        wrong = http.get("/v1/groups")
        assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
