"""Groups, the log, commits with their roster and Welcomes, access, fetch by cursor."""

from __future__ import annotations

import os

from ping_web.core.envelope import Hlc, MessageKind

from relay_client import b64d, b64e, new_group_id, roster_content
from relay_db import dump


def refused(r, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == code, body
    return body


def test_create_group(device) -> None:
    alice, bob = device(), device()
    group = new_group_id()
    assert alice.ok("POST", "/v1/groups", {"group_id": b64e(group)})["created"] is True
    assert alice.ok("POST", "/v1/groups", {"group_id": b64e(group)})["created"] is False
    refused(bob.call("POST", "/v1/groups", {"group_id": b64e(group)}), 409, "group_exists")
    info = alice.ok("GET", f"/v1/groups/{b64e(group)}")
    assert info["epoch"] == 0 and info["head"] == 0 and info["creator"] == alice.id
    assert info["members"] == [{"device_id": alice.id, "from_seq": 1, "removed_at": None}]
    refused(bob.call("GET", f"/v1/groups/{b64e(group)}"), 403, "not_member")
    refused(bob.call("GET", f"/v1/groups/{b64e(new_group_id())}"), 404, "unknown_group")


def test_post_refusals(device) -> None:
    alice, mallory = device(), device()
    group = alice.create_group()
    refused(mallory.post(group, mallory.application(group, 0)), 403, "not_member")
    # an envelope whose sender is alice, posted with mallory's token
    refused(mallory.post(group, alice.application(group, 0)), 403, "wrong_sender")
    other = alice.create_group()
    refused(alice.post(group, alice.application(other, 0)), 400, "group_mismatch")
    hlc = Hlc(1, 0)
    commit = alice.handshake(MessageKind.COMMIT, group, 0, 99, hlc, b"c")
    refused(alice.post(group, commit), 400, "wrong_kind")
    welcome = alice.handshake(MessageKind.WELCOME, group, 1, 99, hlc, b"w")
    refused(alice.post(group, welcome), 400, "wrong_kind")
    refused(alice.post(new_group_id(), alice.application(new_group_id(), 0)), 400, "group_mismatch")
    lost = new_group_id()
    refused(alice.post(lost, alice.application(lost, 0)), 404, "unknown_group")
    assert alice.fetch_all(group) == []


def test_stale_commit_and_epoch_window(device) -> None:
    alice = device()
    group = alice.create_group()
    assert alice.commit(group, 0).json() == {"seq": 1, "duplicate": False, "epoch": 1}
    body = refused(alice.commit(group, 0), 409, "stale_commit")
    assert body["epoch"] == 1 and body["head"] == 1
    body = refused(alice.commit(group, 5), 409, "stale_commit")
    assert body["epoch"] == 1 and body["head"] == 1
    for epoch in (1, 2, 3, 4):
        assert alice.commit(group, epoch).status_code == 200
    # the group is at epoch 5: application messages of epochs 3..5 are accepted
    for epoch in (3, 4, 5):
        assert alice.post(group, alice.application(group, epoch)).status_code == 200
    for epoch in (0, 2, 6):
        body = refused(alice.post(group, alice.application(group, epoch)), 409, "wrong_epoch")
        assert body["epoch"] == 5 and body["head"] == 8
    hlc = Hlc(1, 0)
    assert (
        alice.post(group, alice.handshake(MessageKind.PROPOSAL, group, 5, alice.next_seq(group), hlc, b"p")).status_code
        == 200
    )
    body = refused(
        alice.post(group, alice.handshake(MessageKind.PROPOSAL, group, 4, alice.next_seq(group), hlc, b"p")),
        409,
        "wrong_epoch",
    )
    assert body["epoch"] == 5


def test_repeated_post_returns_the_original_seq(device, relay) -> None:
    alice = device()
    group = alice.create_group()
    envelope = alice.application(group, 0, b"once")
    first = alice.post(group, envelope).json()
    assert first == {"seq": 1, "duplicate": False, "epoch": 0}
    assert alice.post(group, envelope).json() == {"seq": 1, "duplicate": True, "epoch": 0}
    # same (sender device, seq), other bytes: not a duplicate but a reused seq (issue 17, item 9)
    again = alice.application(group, 0, b"other text", seq=envelope.seq)
    r = alice.post(group, again)
    assert (r.status_code, r.json()["error"]) == (409, "seq_reused")
    assert [s for s, _ in alice.fetch_all(group)] == [1]
    assert alice.fetch_all(group)[0][1] == envelope.encode()
    # a commit retried after it was accepted gets its seq back, even though the epoch moved
    body = alice.commit_body(group, 0)
    assert alice.ok("POST", f"/v1/groups/{b64e(group)}/commits", body) == {"seq": 2, "duplicate": False, "epoch": 1}
    assert alice.ok("POST", f"/v1/groups/{b64e(group)}/commits", body) == {"seq": 2, "duplicate": True, "epoch": 1}
    assert [s for s, _ in alice.fetch_all(group)] == [1, 2]


def test_commit_welcome_and_roster_in_one_transaction(device) -> None:
    alice, bob, carol, dave = device(), device(), device(), device()
    group = alice.create_group()
    r = alice.commit(group, 0, added=[bob.device_id, carol.device_id, dave.device_id])
    assert r.json() == {"seq": 1, "duplicate": False, "epoch": 1}
    # every joiner has the Welcome in its mailbox (not just the first)
    for joiner in (bob, carol, dave):
        items = joiner.ok("GET", "/v1/welcomes")["welcomes"]
        assert len(items) == 1
        assert items[0]["group_id"] == b64e(group) and items[0]["commit_seq"] == 1
        assert b64d(items[0]["envelope"])[:1]  # the Welcome envelope bytes
    assert alice.ok("GET", "/v1/welcomes")["welcomes"] == []
    # acknowledged Welcomes go away, for that device only
    ids = [w["id"] for w in bob.ok("GET", "/v1/welcomes")["welcomes"]]
    assert bob.ok("POST", "/v1/welcomes/ack", {"ids": ids}) == {"acked": 1}
    assert bob.ok("POST", "/v1/welcomes/ack", {"ids": ids}) == {"acked": 0}
    assert bob.ok("GET", "/v1/welcomes")["welcomes"] == []
    assert carol.ok("POST", "/v1/welcomes/ack", {"ids": ids}) == {"acked": 0}  # not hers
    assert len(carol.ok("GET", "/v1/welcomes")["welcomes"]) == 1
    info = alice.ok("GET", f"/v1/groups/{b64e(group)}")
    assert info["epoch"] == 1 and sorted(m["device_id"] for m in info["members"]) == sorted(
        d.id for d in (alice, bob, carol, dave)
    )
    # the joiners are members: they post and read
    assert bob.send(group, 1) == 2
    assert [s for s, _ in carol.fetch_all(group)] == [1, 2]


def test_a_refused_commit_stores_nothing(device, relay) -> None:
    alice, bob, carol = device(), device(), device()
    group = alice.create_group()
    alice.commit(group, 0, added=[bob.device_id])
    before = dump(relay.db)
    path = f"/v1/groups/{b64e(group)}/commits"
    refused(alice.commit(group, 1, removed=[carol.device_id]), 409, "not_a_member")
    refused(alice.commit(group, 1, added=[bob.device_id]), 409, "already_member")
    refused(alice.commit(group, 1, added=[os.urandom(16)]), 409, "unknown_device")
    body = alice.commit_body(group, 1, [carol.device_id])
    body["roster"]["signature"] = b64e(bob.sign("relay-roster", b"not this"))
    refused(alice.call("POST", path, body), 403, "invalid_roster_signature")
    # signed over other lists than the ones sent
    body = alice.commit_body(group, 1, [carol.device_id])
    body["roster"]["added"] = []
    body["welcome"] = None
    refused(alice.call("POST", path, body), 403, "invalid_roster_signature")
    body = alice.commit_body(group, 1, [carol.device_id])
    body["welcome"]["joiners"] = [bob.id]
    refused(alice.call("POST", path, body), 400, "welcome_mismatch")
    body = alice.commit_body(group, 1, [carol.device_id])
    body["welcome"] = None
    refused(alice.call("POST", path, body), 400, "welcome_mismatch")
    body = alice.commit_body(group, 1, [carol.device_id])
    wrong = alice.handshake(MessageKind.WELCOME, group, 5, 1, Hlc(1, 0), b"w")
    body["welcome"]["envelope"] = b64e(wrong.encode())
    refused(alice.call("POST", path, body), 400, "welcome_mismatch")
    refused(alice.commit(group, 1, removed=[alice.device_id]), 400, "bad_roster")
    body = alice.commit_body(group, 1, [carol.device_id], [carol.device_id])
    refused(alice.call("POST", path, body), 400, "bad_roster")
    refused(carol.commit(group, 1), 403, "not_member")
    assert dump(relay.db) == before


def test_removed_device_reads_up_to_its_removal(device) -> None:
    alice, bob, mallory = device(), device(), device()
    group = alice.create_group()
    alice.commit(group, 0, added=[bob.device_id])  # seq 1
    bob.send(group, 1, b"before")  # seq 2
    removal = alice.commit(group, 1, removed=[bob.device_id]).json()  # seq 3
    assert removal == {"seq": 3, "duplicate": False, "epoch": 2}
    alice.send(group, 2, b"after")  # seq 4
    # bob reads up to and including the commit that removed him, nothing after
    assert [s for s, _ in bob.fetch_all(group)] == [1, 2, 3]
    page = bob.fetch(group, 3).json()
    assert page == {"entries": [], "head": 3, "more": False, "epoch": None, "removed_at": 3}
    refused(bob.fetch(group, 4), 409, "cursor_ahead")
    refused(bob.post(group, bob.application(group, 2)), 403, "not_member")
    refused(bob.commit(group, 2), 403, "not_member")
    refused(mallory.fetch(group), 403, "not_member")
    # bob's own earlier post, retried, still gets its seq back
    # re-added, bob reads from the commit that added him again
    readd = alice.commit(group, 2, added=[bob.device_id]).json()
    assert readd["seq"] == 5
    page = bob.fetch(group, 0).json()
    assert [e["seq"] for e in page["entries"]] == [5] and page["removed_at"] is None


def test_joiner_reads_from_the_commit_that_added_it(device) -> None:
    alice, bob = device(), device()
    group = alice.create_group()
    alice.send(group, 0, b"private")  # seq 1
    alice.commit(group, 0, added=[bob.device_id])  # seq 2
    alice.send(group, 1)  # seq 3
    assert [s for s, _ in bob.fetch_all(group)] == [2, 3]


def test_fetch_pages(device) -> None:
    alice = device()
    group = alice.create_group()
    for i in range(25):
        alice.send(group, 0, f"m{i}".encode())
    page = alice.fetch(group, 0, limit=10).json()
    assert [e["seq"] for e in page["entries"]] == list(range(1, 11))
    assert page["more"] is True and page["head"] == 25 and page["epoch"] == 0
    page = alice.fetch(group, 20, limit=10).json()
    assert [e["seq"] for e in page["entries"]] == list(range(21, 26)) and page["more"] is False
    assert alice.fetch(group, 25).json()["entries"] == []
    refused(alice.fetch(group, 26), 409, "cursor_ahead")
    for params in (
        {"after": "-1"},
        {"after": "x"},
        {"after": "01"},
        {"limit": "0"},
        {"limit": "100000"},
        {"what": "1"},
    ):
        refused(alice.call("GET", f"/v1/groups/{b64e(group)}/messages", params=params), 400, "bad_query")


def test_cursor_expired(spawn) -> None:
    """--max-retention prunes every old entry, acknowledged or not; an older cursor gets 410."""
    from relay_client import Device, recv_json, subscribe

    relay = spawn("--max-retention", "0.5", "--prune-interval", "0.2")
    alice = Device(relay.url).setup()
    group = alice.create_group()
    alice.send(group, 0, b"old")
    alice.send(group, 0, b"old")
    import time

    time.sleep(1.5)
    alice.send(group, 0, b"new")  # seq 3
    body = refused(alice.fetch(group, 0), 410, "cursor_expired")
    assert body["pruned_through"] == 2
    assert [s for s, _ in alice.fetch_all(group, 2)] == [3]
    with alice.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        subscribe(ws, {group: 1})
        frame = recv_json(ws)
        assert frame["type"] == "error" and frame["status"] == 410 and frame["error"] == "cursor_expired"
    alice.close()


def test_retention_prunes_what_every_reader_acknowledged(spawn) -> None:
    """--retention prunes an entry only once every device that may read it reported a cursor
    at or past it (a fetch's or subscribe's after, an ack frame), and it is old enough."""
    import json
    import time

    from relay_client import Device, recv_json, subscribe

    relay = spawn("--retention", "0.3", "--prune-interval", "0.1", "--cursor-flush-interval", "0.1")
    alice, bob = Device(relay.url).setup(), Device(relay.url).setup()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200  # 1
    for i in range(3):
        alice.send(group, 1, f"m{i}".encode())  # 2, 3, 4

    def pruned() -> int:
        return int(alice.ok("GET", f"/v1/groups/{b64e(group)}")["pruned_through"])

    time.sleep(1.0)
    assert pruned() == 0  # nobody acknowledged anything
    alice.fetch(group, 4)  # alice has everything
    time.sleep(1.0)
    assert pruned() == 0  # bob has not
    assert [s for s, _ in bob.fetch_all(group, 0)] == [1, 2, 3, 4]
    bob.fetch(group, 2)  # bob has up to 2
    deadline = time.monotonic() + 10
    while pruned() != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    refused(bob.fetch(group, 1), 410, "cursor_expired")
    assert [s for s, _ in bob.fetch_all(group, 2)] == [3, 4]
    with bob.stream() as ws:  # an ack frame on the stream reports the cursor too
        assert recv_json(ws)["type"] in ("ready", "welcome")
        subscribe(ws, {group: 2})
        frames = []
        while not frames or frames[-1].get("seq") != 4:
            frames.append(recv_json(ws))
        ws.send(json.dumps({"type": "ack", "groups": [{"group_id": b64e(group), "seq": 4}]}))
        ws.send(json.dumps({"type": "ack", "groups": [{"group_id": b64e(os.urandom(16)), "seq": 1}]}))
        frame = recv_json(ws)
        while frame["type"] == "welcome":
            frame = recv_json(ws)
        assert (frame["status"], frame["error"]) == (409, "not_subscribed")
        while pruned() != 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    alice.send(group, 1, b"later")  # 5
    assert [s for s, _ in bob.fetch_all(group, 4)] == [5]
    alice.close()
    bob.close()


def test_roster_signature_bytes(device) -> None:
    """The documented construction, byte for byte."""
    group, a, b, h = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16, b"\x04" * 32
    content = roster_content(group, 7, h, [b, a], [])
    assert content == group + (7).to_bytes(8, "big") + h + b"\x00\x00\x00\x02" + a + b + b"\x00\x00\x00\x00"


def test_devices_of_a_user(device) -> None:
    user = os.urandom(6)
    phone, laptop, stranger = device(user), device(user), device()
    listed = stranger.ok("GET", f"/v1/users/{b64e(user)}/devices")["devices"]
    assert sorted(d["device_id"] for d in listed) == sorted([phone.id, laptop.id])
    assert all(d["user_id"] == b64e(user) for d in listed)
    assert stranger.ok("GET", f"/v1/users/{b64e(os.urandom(5))}/devices")["devices"] == []
