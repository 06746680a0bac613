"""Limits and malformed input: 413, 429 with Retry-After, 400/415, and nothing stored."""

from __future__ import annotations

import json
import time

from ping_web.core.envelope import Hlc, MessageEnvelope, MessageKind

from relay_client import Device, b64e
from relay_db import dump


def test_payload_too_large(spawn) -> None:
    relay = spawn("--max-body-bytes", "4096", "--max-envelope-bytes", "1024")
    alice = Device(relay.url).setup()
    group = alice.create_group()
    before = dump(relay.db)
    r = alice.post(group, alice.application(group, 0, b"x" * 4000))
    assert (r.status_code, r.json()["error"], r.json()["limit"]) == (413, "payload_too_large", 4096)
    # the same without Content-Length (chunked): counted while reading
    body = json.dumps({"envelope": b64e(alice.application(group, 0, b"y" * 4000).encode())}).encode()
    r = alice.http.post(
        f"/v1/groups/{b64e(group)}/messages",
        content=iter([body[:1000], body[1000:]]),
        headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large")
    r = alice.post(group, alice.application(group, 0, b"z" * 1500))  # body fits, envelope does not
    assert (r.status_code, r.json()["error"], r.json()["limit"]) == (413, "envelope_too_large", 1024)
    assert dump(relay.db) == before
    alice.close()


def test_rate_limit_with_retry_after(spawn) -> None:
    relay = spawn("--rate-per-second", "0.5", "--rate-burst", "4", fast=False)
    alice = Device(relay.url).setup()
    statuses = [alice.call("GET", "/v1/key-packages") for _ in range(6)]
    assert [r.status_code for r in statuses[:4]] == [200] * 4
    limited = statuses[4]
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["retry_after"] == int(limited.headers["retry-after"])
    bob = Device(relay.url).setup()  # per device: bob is not limited by alice's requests
    assert bob.call("GET", "/v1/key-packages").status_code == 200
    time.sleep(int(limited.headers["retry-after"]))
    assert alice.call("GET", "/v1/key-packages").status_code == 200
    alice.close()
    bob.close()


def test_anonymous_rate_limit(spawn) -> None:
    relay = spawn("--anon-rate-per-second", "0.5", "--anon-burst", "3", fast=False)
    d = Device(relay.url)
    replies = [d.http.get("/v1/info") for _ in range(5)]  # the fixture's start probe spent one
    statuses = [r.status_code for r in replies]
    first = statuses.index(429)
    assert statuses == [200] * first + [429] * (5 - first)
    assert first in (2, 3)
    assert int(replies[first].headers["retry-after"]) >= 1
    assert replies[first].json()["error"] == "rate_limited"
    d.close()


def test_malformed_bodies_store_nothing(device, relay) -> None:
    alice, bob = device(), device()
    group = alice.create_group()
    alice.send(group, 0)
    before = dump(relay.db)
    path = f"/v1/groups/{b64e(group)}/messages"
    auth = {"Authorization": f"Bearer {alice.token}"}
    good = alice.application(group, 0, b"fine").encode()
    cases = [
        (b"not json", "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "malformed_json"),
        (b'{"envelope": "a", "envelope": "b"}', "application/json", 400, "malformed_json"),
        (b'{"envelope": NaN}', "application/json", 400, "malformed_json"),
        (b"{}", "application/json", 400, "missing_field"),
        (json.dumps({"envelope": b64e(good), "x": 1}).encode(), "application/json", 400, "unknown_field"),
        (json.dumps({"envelope": b64e(good) + "="}).encode(), "application/json", 400, "bad_field"),
        (json.dumps({"envelope": b64e(good)[:-1] + "!"}).encode(), "application/json", 400, "bad_field"),
        (json.dumps({"envelope": 5}).encode(), "application/json", 400, "bad_field"),
        (json.dumps({"envelope": b64e(good[:-3])}).encode(), "application/json", 400, "malformed_envelope"),
        (json.dumps({"envelope": b64e(good + b"\x00")}).encode(), "application/json", 400, "malformed_envelope"),
        (json.dumps({"envelope": b64e(b"\xa0")}).encode(), "application/json", 400, "malformed_envelope"),
        (json.dumps({"envelope": b64e(good)}).encode(), "text/plain", 415, "unsupported_media_type"),
        (b"\xff\xfe", "application/json", 400, "malformed_json"),
    ]
    for body, kind, status, code in cases:
        r = alice.http.post(path, content=body, headers={**auth, "Content-Type": kind})
        assert (r.status_code, r.json()["error"]) == (status, code), (body[:60], r.text)
    # a commit envelope whose content hash is not SHA-256 of its payload
    commit = alice.handshake(MessageKind.COMMIT, group, 0, 77, Hlc(1, 0), b"payload")
    forged = MessageEnvelope(
        1,
        commit.conversation_id,
        0,
        MessageKind.COMMIT,
        commit.sender_device,
        77,
        commit.hlc,
        b"other",
        commit.content_hash,
    )
    commit_body = alice.commit_body(group, 0)
    commit_body["commit"] = b64e(forged.encode())
    r = alice.call("POST", f"/v1/groups/{b64e(group)}/commits", commit_body)
    assert (r.status_code, r.json()["error"]) == (400, "malformed_envelope"), r.text
    for path2, body in [
        ("/v1/groups", {"group_id": "short"}),
        ("/v1/key-packages", {"key_packages": "nope"}),
        ("/v1/welcomes/ack", {"ids": [0]}),
        ("/v1/welcomes/ack", {"ids": []}),
        ("/v1/welcomes/ack", {"ids": [True]}),
        (f"/v1/devices/{bob.id}/key-packages/claim", {"x": 1}),
    ]:
        r = alice.call("POST", path2, body)
        assert r.status_code == 400, (path2, r.text)
    for path2 in ["/v1/groups/abc", f"/v1/groups/{b64e(group)}x/messages", "/v1/devices/%20"]:
        r = alice.call("GET", path2)
        assert r.status_code in (400, 404), (path2, r.text)
        assert "error" in r.json()
    assert dump(relay.db) == before


def test_group_registrations_are_rate_limited(spawn) -> None:
    relay = spawn("--group-rate-per-second", "0.001", "--group-burst", "3")
    alice = Device(relay.url).setup()
    for _ in range(3):
        alice.create_group()
    before = dump(relay.db)
    r = alice.call("POST", "/v1/groups", {"group_id": b64e(b"\x07" * 16)})
    assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
    assert int(r.headers["retry-after"]) >= 1
    assert dump(relay.db) == before
    alice.close()


def test_upload_and_download_bytes_are_rate_limited(spawn) -> None:
    """A device's request bodies and HTTP pages are limited in bytes per second: one device
    sending or reading megabytes cannot take the event loop from the others."""
    relay = spawn(
        "--upload-bytes-per-second", "1000", "--upload-burst-bytes", "150000",
        "--download-bytes-per-second", "1000", "--download-burst-bytes", "150000",
    )  # fmt: skip
    alice, bob = Device(relay.url).setup(), Device(relay.url).setup()
    group = alice.create_group()
    alice.send(group, 0, b"x" * 60_000)  # about 80 kB of base64 JSON
    before = dump(relay.db)
    r = alice.post(group, alice.application(group, 0, b"y" * 60_000))
    assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
    assert int(r.headers["retry-after"]) >= 1
    assert dump(relay.db) == before
    assert bob.call("GET", "/v1/key-packages").status_code == 200  # another device is not limited
    for _ in range(5):  # pages of 60 kB each: by the fourth alice owes more than she may read
        r = alice.fetch(group, 0)
        if r.status_code != 200:
            break
    assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
    alice.close()
    bob.close()
