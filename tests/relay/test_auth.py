"""Registration, challenges, tokens: every 401 is typed, and real Ed25519 is checked."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed

from relay_client import Device, b64e, recv_json
from relay_db import dump


def expect_401(r, code: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"] == code, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_register_is_bound_to_key_and_user(relay) -> None:
    d = Device(relay.url)
    r = d.register()
    assert r.status_code == 200 and r.json()["created"] is True
    r = d.register()  # the same registration again: idempotent
    assert r.status_code == 200 and r.json()["created"] is False
    thief = Device(relay.url)
    thief.device_id = d.device_id  # same device id, another key
    r = thief.register()
    assert r.status_code == 409 and r.json()["error"] == "device_conflict"
    other_user = Device(relay.url)
    other_user.device_id, other_user.key, other_user.public_key = d.device_id, d.key, d.public_key
    r = other_user.register()  # same key, another user
    assert r.status_code == 409 and r.json()["error"] == "device_conflict"


def test_register_needs_proof_of_the_key(relay) -> None:
    d = Device(relay.url)
    d.key = Ed25519PrivateKey.generate()  # signs with a key that is not signature_public_key
    expect_401(d.register(), "invalid_signature")
    wrong_origin = Device(relay.url, origin="http://elsewhere.test")
    expect_401(wrong_origin.register(), "invalid_signature")


def test_login_and_bearer(relay, device) -> None:
    alice = device()
    me = alice.ok("GET", f"/v1/devices/{alice.id}")
    assert me["signature_public_key"] == b64e(alice.public_key)
    assert me["user_id"] == b64e(alice.user_id)


def test_unknown_device_gets_no_challenge(relay) -> None:
    d = Device(relay.url)
    r = d.http.post("/v1/auth/challenge", json={"device_id": d.id})
    expect_401(r, "unknown_device")


def test_forged_signature(relay, device) -> None:
    d = device(login=False)
    assert d.register().status_code == 200
    forger = Ed25519PrivateKey.generate()
    challenge = d.challenge()
    forged = forger.sign(b"ping-web/relay-auth\x00" + challenge + d.device_id + d.origin.encode())
    expect_401(d.answer(challenge, forged), "invalid_signature")


def test_signature_for_another_origin_or_label(relay, device) -> None:
    d = device(login=False)
    d.register()
    challenge = d.challenge()
    other_origin = d.key.sign(b"ping-web/relay-auth\x00" + challenge + d.device_id + b"http://evil.test")
    expect_401(d.answer(challenge, other_origin), "invalid_signature")
    challenge = d.challenge()
    other_label = d.key.sign(b"ping-web/relay-roster\x00" + challenge + d.device_id + d.origin.encode())
    expect_401(d.answer(challenge, other_label), "invalid_signature")


def test_replayed_challenge(relay, device) -> None:
    d = device(login=False)
    d.register()
    challenge = d.challenge()
    assert d.answer(challenge).status_code == 200
    expect_401(d.answer(challenge), "unknown_challenge")


def test_challenge_of_another_device(relay, device) -> None:
    a, b = device(login=False), device(login=False)
    a.register()
    b.register()
    challenge = a.challenge()
    signature = b.sign("relay-auth", challenge + b.device_id + b.origin.encode())
    r = b.http.post(
        "/v1/auth/token", json={"device_id": b.id, "challenge": b64e(challenge), "signature": b64e(signature)}
    )
    expect_401(r, "unknown_challenge")
    expect_401(a.answer(challenge), "unknown_challenge")  # used up by the wrong answer


def test_never_issued_challenge(relay, device) -> None:
    d = device(login=False)
    d.register()
    expect_401(d.answer(b"\x07" * 32), "unknown_challenge")


def test_bad_tokens(relay, device) -> None:
    d = device()
    for header in [None, "Basic abc", "Bearer", "Bearer !!!", "Bearer " + b64e(b"\x01" * 32)]:
        headers = {} if header is None else {"Authorization": header}
        r = d.http.get("/v1/key-packages", headers=headers)
        expected = "missing_token" if header in (None, "Basic abc", "Bearer") else "invalid_token"
        expect_401(r, expected)


def test_tokens_are_stored_hashed(relay, device) -> None:
    d = device()
    content = dump(relay.db)
    raw = bytes.fromhex(__import__("base64").urlsafe_b64decode(d.token + "=").hex())
    assert all(raw not in repr(row).encode() and raw.hex() not in repr(row) for row in content["tokens"])
    assert any(len(row[0]) == 32 for row in content["tokens"])


def test_expired_challenge_and_token(spawn) -> None:
    relay = spawn("--challenge-ttl", "0.3", "--token-ttl", "1.5")
    d = Device(relay.url)
    d.register()
    challenge = d.challenge()
    time.sleep(0.5)
    expect_401(d.answer(challenge), "challenge_expired")
    d.login()
    assert d.call("GET", "/v1/key-packages").status_code == 200
    with d.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        time.sleep(1.7)
        expect_401(d.call("GET", "/v1/key-packages"), "token_expired")
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(recv_json(ws, timeout=10))
    assert frames[-1]["type"] == "error" and frames[-1]["error"] == "token_expired"
    assert closed.value.rcvd.code == 4401
    d.close()


def test_stream_refuses_bad_tokens(relay, device) -> None:
    d = device()
    d.token = b64e(b"\x02" * 32)
    with d.stream() as ws:
        frame = recv_json(ws)
        assert frame["type"] == "error" and frame["status"] == 401 and frame["error"] == "invalid_token"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 4401
