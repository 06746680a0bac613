"""Failed authentication is rate limited per client address, and the client address is
the connection's unless a configured proxy forwards it (issue 17, item 7)."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from relay_client import Device, b64e, recv_json

RATES_RAISED = ["--rate-per-second", "100000", "--rate-burst", "100000", "--anon-rate-per-second", "100000"]
RATES_RAISED += ["--anon-burst", "100000"]


def test_unknown_tokens_are_rate_limited_per_address(spawn) -> None:
    relay = spawn(*RATES_RAISED, fast=False)  # the default failed-authentication limits
    statuses: list[int] = []
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        for i in range(200):
            token = b64e(i.to_bytes(32, "big"))
            statuses.append(http.get("/v1/key-packages", headers={"Authorization": f"Bearer {token}"}).status_code)
    assert set(statuses) == {401, 429}, statuses
    first = statuses.index(429)
    assert statuses[first:] == [429] * (200 - first)  # no database lookup once limited
    assert 5 <= first <= 60, first


def test_failed_authentication_limit(spawn) -> None:
    relay = spawn("--auth-failure-rate-per-second", "0.01", "--auth-failure-burst", "4")
    alice = Device(relay.url).setup()
    bad = {"Authorization": "Bearer " + b64e(b"\x05" * 32)}
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        codes = [http.get("/v1/key-packages", headers=bad).json()["error"] for _ in range(6)]
        assert codes[:4] == ["invalid_token"] * 4, codes
        assert codes[4:] == ["rate_limited"] * 2, codes
        limited = http.get("/v1/key-packages", headers=bad)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["retry_after"] == int(limited.headers["retry-after"])
        # a bad token on the stream's handshake counts too, and is refused with 4429
        with _stream(relay.url, bad["Authorization"][7:]) as ws:
            frame = recv_json(ws)
            assert (frame["status"], frame["error"]) == (429, "rate_limited"), frame
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd.code == 4429
        # wrong answers to a login challenge count as failures too
        challenge = alice.challenge()
        r = alice.answer(challenge, b"\x00" * 64)
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
    # a valid token still works from the same address: only failures are limited
    assert alice.call("GET", "/v1/key-packages").status_code == 200
    alice.close()


def _stream(url: str, token: str):
    from websockets.sync.client import connect

    return connect(url.replace("http://", "ws://") + "/v1/stream", subprotocols=["ping-relay.v1", f"bearer.{token}"])


def test_forwarded_for_is_ignored_unless_from_a_configured_proxy(spawn) -> None:
    slow = ["--anon-rate-per-second", "0.01", "--anon-burst", "3"]
    relay = spawn(*slow, fast=False)
    # one address (127.0.0.1) sending as if it were ten: one bucket
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        statuses = [http.get("/v1/info", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(10)]
    assert statuses.count(429) >= 6, statuses
    # behind a configured proxy (here: the test, on 127.0.0.1) the forwarded address counts
    proxied = spawn(*slow, "--trusted-proxy", "127.0.0.1", fast=False)
    with httpx.Client(base_url=proxied.url, timeout=30) as http:
        statuses = [http.get("/v1/info", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(10)]
        assert statuses == [200] * 10, statuses
        same = [http.get("/v1/info", headers={"X-Forwarded-For": "198.51.100.7"}).status_code for _ in range(5)]
        assert same.count(429) >= 2, same


def test_info_reports_the_new_limits(relay) -> None:
    limits = json.loads(httpx.get(relay.url + "/v1/info", timeout=30).text)["limits"]
    assert {"auth_failure_rate_per_second", "auth_failure_burst"} <= limits.keys()
