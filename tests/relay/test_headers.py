"""Security headers on every reply, API and static files, errors included (issue 17, item
12), and redirects that point at the configured origin, never at the Host header (item 13)."""

from __future__ import annotations

from pathlib import Path

import httpx

from relay_client import ORIGIN, Device

SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def check_headers(r: httpx.Response) -> None:
    where = f"{r.request.method} {r.request.url.path} -> {r.status_code}"
    for name, value in SECURITY.items():
        assert r.headers.get(name) == value, (where, name, dict(r.headers))
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, (where, csp)
    assert "default-src" in csp, (where, csp)


def test_security_headers_on_every_reply(spawn, tmp_path: Path) -> None:
    site = tmp_path / "web"
    site.mkdir()
    (site / "index.html").write_text("<h1>app</h1>")
    (site / "m.wasm").write_bytes(b"\x00asm")
    relay = spawn("--static", f"/web={site}", "--index", "/web/")
    alice = Device(relay.url).setup()
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        replies = [
            http.get("/v1/info"),  # 200
            http.post("/v1/auth/challenge", content=b"{", headers={"Content-Type": "application/json"}),  # 400
            http.get("/v1/key-packages"),  # 401
            http.get("/v1/nope"),  # 404
            http.get("/v1/groups"),  # 405
            http.request("PATCH", "/v1/info"),  # 405
            http.get("/web/"),  # a static page
            http.get("/web/m.wasm"),
            http.get("/web/missing.js"),  # static 404
            http.post("/web/index.html"),  # static 405
            http.get("/"),  # the index redirect
            http.get("/web"),  # the directory redirect
            http.get("/elsewhere"),
        ]
    replies.append(alice.call("GET", "/v1/key-packages"))
    for r in replies:
        check_headers(r)
    # the page may run the app: its scripts, the wasm, workers and requests on its own origin
    page_csp = replies[6].headers["content-security-policy"]
    for directive in ("script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval';", "connect-src 'self'", "worker-src 'self'"):
        assert directive in page_csp, page_csp  # 'unsafe-eval': ping_web's loader evaluates the wasm glue
    assert "'unsafe-inline'" not in page_csp and "data:;" not in page_csp.split("script-src")[1].split(";")[0]
    # the API's replies are data, never a document: nothing may load from them
    assert replies[0].headers["content-security-policy"].startswith("default-src 'none'")
    alice.close()


def test_redirects_use_the_configured_origin_not_the_host_header(spawn, tmp_path: Path) -> None:
    site = tmp_path / "web"
    (site / "sub").mkdir(parents=True)
    (site / "index.html").write_text("<h1>app</h1>")
    (site / "sub" / "index.html").write_text("<h1>sub</h1>")
    relay = spawn("--static", f"/web={site}", "--index", "/web/")
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        for path in ("/web", "/web/sub", "/"):
            r = http.get(path, headers={"Host": "evil.test"})
            assert r.status_code in (301, 302, 307, 308), (path, r.status_code)
            location = r.headers["location"]
            assert "evil.test" not in location, (path, location)
            assert location.startswith((ORIGIN + "/", "/")), (path, location)
            assert not location.startswith("//"), (path, location)
