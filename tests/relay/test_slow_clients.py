"""Half-sent requests are timed out and connections are capped (issue 17, item 6): a client
that sends its headers or its body slowly is answered 408 and disconnected, a connection
over the cap is answered 503 at once, and honest requests go on meanwhile."""

from __future__ import annotations

import json
import os
import socket
import time

import httpx

from relay_client import Device, b64e

HANG_GUARD = 30.0  # seconds: only so that a relay that never closes fails instead of hanging


def open_socket(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the relay sends until it closes the connection (a hang fails the test)."""
    reply = b""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        reply += chunk
    else:
        raise AssertionError(f"the relay kept the connection open: {reply[:200]!r}")
    return reply


def read_reply(s: socket.socket) -> bytes:
    """One reply, by its Content-Length (the relay may keep the connection open after it)."""
    raw = b""
    deadline = time.monotonic() + HANG_GUARD
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
        assert time.monotonic() < deadline, raw[:200]
        chunk = s.recv(65536)
        assert chunk, raw[:200]
        raw += chunk
    return raw


def _length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def json_reply(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def test_slow_headers_and_bodies_are_timed_out(spawn) -> None:
    relay = spawn("--header-timeout", "1", "--body-timeout", "1")
    honest = Device(relay.url).setup()
    slow = []
    for _ in range(30):  # nothing at all
        slow.append(open_socket(relay.port))
    for _ in range(30):  # half a request line and headers
        s = open_socket(relay.port)
        s.sendall(b"GET /v1/info HTTP/1.1\r\nHost: relay.test\r\nX-Slow: ")
        slow.append(s)
    bodies = []
    for _ in range(10):  # headers complete, part of the body
        s = open_socket(relay.port)
        s.sendall(
            b"POST /v1/auth/challenge HTTP/1.1\r\nHost: relay.test\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"device_id"'
        )
        bodies.append(s)
    assert honest.call("GET", "/v1/key-packages").status_code == 200  # served meanwhile
    for s in slow:
        raw = read_until_closed(s)
        if raw:  # an answer, if any, is a typed 408
            status, headers, body = json_reply(raw)
            assert (status, body["error"]) == (408, "request_timeout"), raw[:300]
            assert headers["connection"] == "close"
        s.close()
    for s in bodies:
        status, headers, body = json_reply(read_until_closed(s))
        assert (status, body["error"]) == (408, "request_timeout")
        assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
        s.close()
    assert honest.call("GET", "/v1/key-packages").status_code == 200
    assert "Traceback" not in relay.log(), relay.log()[-3000:]
    honest.close()


def test_connections_are_capped(spawn) -> None:
    relay = spawn("--max-connections", "20", "--header-timeout", "30")
    idle = [open_socket(relay.port) for _ in range(20)]
    time.sleep(0.3)  # let the relay accept them all
    over = open_socket(relay.port)
    status, headers, body = json_reply(read_until_closed(over))
    assert (status, body["error"]) == (503, "too_many_connections"), body
    assert int(headers["retry-after"]) >= 1
    over.close()
    for s in idle[:5]:
        s.close()
    time.sleep(0.3)  # the relay sees them gone
    with httpx.Client(base_url=relay.url, timeout=HANG_GUARD) as http:
        assert http.get("/v1/info").status_code == 200  # room again
    for s in idle[5:]:
        s.close()


def test_malformed_http_gets_a_json_400(relay) -> None:
    s = open_socket(relay.port)
    s.sendall(b"GET /v1/info HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
    status, headers, body = json_reply(read_until_closed(s))
    assert (status, body["error"]) == (400, "malformed_request"), body
    assert headers["x-content-type-options"] == "nosniff"
    s.close()


def test_request_bodies_in_flight_are_bounded(spawn) -> None:
    """One device sending big bodies slowly, many at once, holds at most its share of the
    relay's memory; another device's requests go on; past the process's budget, 503."""
    relay = spawn(
        "--body-timeout", "60", "--body-bytes-in-flight-per-client", "9000000", "--body-bytes-in-flight", "20000000"
    )  # fmt: skip
    mallory, honest = Device(relay.url).setup(), Device(relay.url).setup()
    group = mallory.create_group()
    path = f"/v1/groups/{b64e(group)}/messages"

    def slow_upload(device: Device) -> socket.socket:
        s = open_socket(relay.port)
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {device.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {4 * 1024 * 1024}\r\n\r\n".encode()
            + b'{"envelope": "AAAA'
        )
        return s

    held = [slow_upload(mallory), slow_upload(mallory)]  # 8 MiB declared: its share
    third = slow_upload(mallory)
    status, headers, body = json_reply(read_reply(third))
    assert (status, body["error"]) == (429, "uploads_limited"), body
    assert headers["retry-after"] == "1"
    assert honest.call("GET", "/v1/key-packages").status_code == 200
    others = [Device(relay.url).setup() for _ in range(3)]
    held += [slow_upload(others[0]), slow_upload(others[0]), slow_upload(others[1])]  # 20 MiB in all
    status, _, body = json_reply(read_reply(slow_upload(others[2])))
    assert (status, body["error"]) == (503, "busy"), body
    for s in held:
        s.close()
    time.sleep(0.3)  # the relay sees them gone and gives their bytes back
    assert mallory.post(group, mallory.application(group, 0)).status_code == 200
    for d in (mallory, honest, *others):
        d.close()


def test_a_reply_left_unread_is_dropped(spawn) -> None:
    """A client that asks for a big page and never reads it does not hold it in the relay:
    the connection is dropped after --body-timeout."""
    relay = spawn("--body-timeout", "1", "--page-max-bytes", str(8 * 1024 * 1024))
    alice = Device(relay.url).setup()
    group = alice.create_group()
    for _ in range(6):
        alice.send(group, 0, os.urandom(900 * 1024))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(HANG_GUARD)
    s.connect(("127.0.0.1", relay.port))
    s.sendall(
        f"GET /v1/groups/{b64e(group)}/messages?after=0 HTTP/1.1\r\nHost: relay.test\r\n"
        f"Authorization: Bearer {alice.token}\r\n\r\n".encode()
    )
    time.sleep(3)  # the relay's reply (about 7 MB) waits in its buffer; the deadline passes
    received = len(read_until_closed(s))
    s.close()
    assert received < 6 * 900 * 1024, received  # cut: the rest was dropped, not kept for this reader
    assert alice.fetch(group).status_code == 200
    alice.close()
