"""Device logs at the relay (docs/relay.md, "Device logs" and "Links"): who may register under a
user id, appends checked like the clients check them, revocation, link slots. Each test acts
as the hostile client too."""

from __future__ import annotations

import os

from tests.identity_keys import VERIFIER

from ping_web.core import devlog
from ping_web.core.devlog import DeviceLog, LogEntry, LogOp

from relay_client import Device, b64d, b64e


def error(r) -> str:  # type: ignore[no-untyped-def]
    return str(r.json()["error"])


def test_a_new_user_registers_with_its_genesis_entry(relay) -> None:
    phone = Device(relay.url)
    r = phone.register(genesis=False)
    assert r.status_code == 400 and error(r) == "genesis_required"
    other = Device(relay.url)
    body = phone.register_body()
    body["device_log"] = other.register_body()["device_log"]  # another device's genesis
    r = phone.http.post("/v1/devices", json=body)
    assert r.status_code == 400 and error(r) == "invalid_log_entry"
    body = phone.register_body()
    tampered = bytearray(b64d(body["device_log"]))
    tampered[-1] ^= 1
    body["device_log"] = b64e(bytes(tampered))
    r = phone.http.post("/v1/devices", json=body)
    assert r.status_code == 400 and error(r) == "invalid_log_entry"
    assert phone.register().status_code == 200
    entries = phone.read_log()
    assert len(entries) == 1 and LogEntry.decode(entries[0]).device_key == phone.public_key
    assert DeviceLog.replay(entries, VERIFIER).active()[0].device_id.raw == phone.device_id


def test_nobody_registers_under_a_user_id_that_has_devices(relay, device) -> None:
    bob = device(b"bob-" + os.urandom(4))
    stranger = Device(relay.url, bob.user_id)
    for genesis in (True, False):
        r = stranger.register(genesis=genesis)
        assert r.status_code == 403 and error(r) == "link_required", r.text
    listed = bob.ok("GET", f"/v1/users/{b64e(bob.user_id)}/devices")["devices"]
    assert [d["device_id"] for d in listed] == [bob.id]
    assert len(bob.read_log()) == 1


def test_a_device_added_by_one_of_the_users_devices_registers(relay, device) -> None:
    user = os.urandom(6)
    phone = device(user)
    laptop = device(user)  # the fixture: phone appends an ADD entry, then laptop registers
    listed = phone.ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]
    assert sorted(d["device_id"] for d in listed) == sorted([phone.id, laptop.id])
    log = DeviceLog.replay(phone.read_log(), VERIFIER)
    assert log.device_by_key(laptop.public_key).added_by == phone.public_key  # type: ignore[union-attr]
    assert laptop.register().json()["created"] is False


def test_appends_are_checked_like_clients_check_them(relay, device) -> None:
    user = os.urandom(6)
    phone = device(user)
    newcomer, stranger = Device(relay.url, user), device()
    entry = phone.next_entry(LogOp.ADD, newcomer)
    # not the signer: another user's device, or the entry's signer is not the caller
    r = stranger.call("POST", f"/v1/users/{b64e(user)}/device-log", {"entry": b64e(entry)})
    assert r.status_code == 403 and error(r) == "wrong_user"
    r = stranger.append(stranger.log_entry(LogOp.ADD, newcomer, 1, LogEntry.decode(phone.read_log()[0]).hash))
    assert r.status_code == 400 and error(r) == "invalid_log_entry"  # no use in its own log either
    # a bad signature, a bad consent, a broken chain
    for position in (-100, -1):
        bad = bytearray(entry)
        bad[position] ^= 1
        r = phone.append(bytes(bad))
        assert r.status_code == 400 and error(r) == "invalid_log_entry", r.text
    r = phone.append(phone.log_entry(LogOp.ADD, newcomer, 1, bytes(32)))
    assert r.status_code == 400 and error(r) == "invalid_log_entry"
    r = phone.append(b"\x01\x02")
    assert r.status_code == 400
    assert len(phone.read_log()) == 1  # nothing stored
    # the good entry, twice (idempotent), then another entry for the same seq: a conflict
    assert phone.append(entry).status_code == 200
    assert phone.append(entry).status_code == 200
    other = Device(relay.url, user)
    r = phone.append(phone.log_entry(LogOp.ADD, other, 1, LogEntry.decode(phone.read_log()[0]).hash))
    assert r.status_code == 409 and error(r) == "log_conflict"
    assert len(phone.read_log()) == 2


def test_a_user_has_at_most_sixteen_active_devices(relay, device) -> None:
    user = os.urandom(6)
    phone = device(user)
    for _ in range(devlog.MAX_ACTIVE_DEVICES - 1):
        phone.add_device(Device(relay.url, user))
    r = phone.append(phone.next_entry(LogOp.ADD, Device(relay.url, user)))
    assert r.status_code == 400 and error(r) == "invalid_log_entry"
    listed = phone.ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]
    assert len(listed) == devlog.MAX_ACTIVE_DEVICES


def test_a_revoked_device_loses_its_tokens_keypackages_and_stream(relay, device) -> None:
    user = os.urandom(6)
    phone, lost = device(user), device(user)
    assert lost.publish([os.urandom(64) for _ in range(3)]).status_code == 200
    with lost.stream() as ws:
        assert ws.recv(timeout=10)  # ready
        r = phone.revoke_device(lost)
        assert r.status_code == 200, r.text
        frames = []
        try:
            while True:
                frames.append(ws.recv(timeout=10))
        except Exception as closed:
            code = getattr(getattr(closed, "rcvd", None), "code", None)
        assert code == 4409, (frames, code)
    r = lost.call("GET", "/v1/key-packages")
    assert r.status_code == 401
    r = lost.http.post("/v1/auth/challenge", json={"device_id": lost.id})
    assert r.status_code == 403 and error(r) == "device_revoked"
    assert lost.register(genesis=False).status_code == 403
    r = phone.call("POST", f"/v1/devices/{lost.id}/key-packages/claim", {})
    assert r.status_code == 404 and error(r) == "no_key_package"
    listed = phone.ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]
    assert [d["device_id"] for d in listed] == [phone.id]
    # a revoked device never comes back, and the last device cannot be revoked
    r = phone.append(phone.next_entry(LogOp.ADD, lost))
    assert r.status_code == 400 and error(r) == "invalid_log_entry"
    r = phone.append(phone.next_entry(LogOp.REVOKE, phone))
    assert r.status_code == 400 and error(r) == "invalid_log_entry"


def test_link_slots(relay, device) -> None:
    user = os.urandom(6)
    phone, stranger = device(user), device()
    link_id = os.urandom(16)
    anon = Device(relay.url)
    r = anon.http.post(f"/v1/links/{b64e(link_id)}/request", json={"request": b64e(b"sealed")})
    assert r.status_code == 404 and error(r) == "unknown_link"  # nobody opened it
    assert phone.ok("POST", "/v1/links", {"link_id": b64e(link_id)})["expires_in_ms"] > 0
    r = stranger.call("POST", "/v1/links", {"link_id": b64e(link_id)})
    assert r.status_code == 409 and error(r) == "link_taken"
    assert phone.ok("GET", f"/v1/links/{b64e(link_id)}/request") == {"request": None}
    r = stranger.call("GET", f"/v1/links/{b64e(link_id)}/request")
    assert r.status_code == 404  # another user's slot: not even its existence
    assert anon.http.post(f"/v1/links/{b64e(link_id)}/request", json={"request": b64e(b"sealed")}).status_code == 200
    r = anon.http.post(f"/v1/links/{b64e(link_id)}/request", json={"request": b64e(b"other")})
    assert r.status_code == 409 and error(r) == "link_taken"  # first request wins
    assert phone.ok("GET", f"/v1/links/{b64e(link_id)}/request") == {"request": b64e(b"sealed")}
    assert anon.http.get(f"/v1/links/{b64e(link_id)}/answer").json() == {"answer": None}
    r = stranger.call("POST", f"/v1/links/{b64e(link_id)}/answer", {"answer": b64e(b"evil")})
    assert r.status_code == 404
    assert phone.ok("POST", f"/v1/links/{b64e(link_id)}/answer", {"answer": b64e(b"ok")})["stored"] is True
    assert anon.http.get(f"/v1/links/{b64e(link_id)}/answer").json() == {"answer": b64e(b"ok")}
    for _ in range(8):
        phone.call("POST", "/v1/links", {"link_id": b64e(os.urandom(16))})
    r = phone.call("POST", "/v1/links", {"link_id": b64e(os.urandom(16))})
    assert r.status_code == 409 and error(r) == "too_many_links"
