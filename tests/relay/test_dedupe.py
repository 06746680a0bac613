"""Dedupe takes only the identical bytes (issue 17, item 9), and a device that is no longer
a member learns nothing about the group from a replayed post (item 10)."""

from __future__ import annotations

from relay_client import b64e
from relay_db import dump


def test_same_seq_other_bytes_is_a_409(device, relay) -> None:
    alice, bob = device(), device()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    envelope = alice.application(group, 1, b"once")
    assert alice.post(group, envelope).json() == {"seq": 2, "duplicate": False, "epoch": 1}
    assert alice.post(group, envelope).json() == {"seq": 2, "duplicate": True, "epoch": 1}
    before = dump(relay.db)
    changed = alice.application(group, 1, b"other text", seq=envelope.seq)
    r = alice.post(group, changed)
    assert (r.status_code, r.json()["error"]) == (409, "seq_reused"), r.text
    assert "epoch" not in r.json() and "head" not in r.json()
    # a commit that reuses an application message's seq: refused, the epoch stays
    body = alice.commit_body(group, 1, seq=envelope.seq)
    r = alice.call("POST", f"/v1/groups/{b64e(group)}/commits", body)
    assert (r.status_code, r.json()["error"]) == (409, "seq_reused"), r.text
    assert dump(relay.db) == before
    assert alice.ok("GET", f"/v1/groups/{b64e(group)}")["epoch"] == 1
    # a commit retried with its own bytes is still its duplicate
    body = alice.commit_body(group, 1)
    first = alice.ok("POST", f"/v1/groups/{b64e(group)}/commits", body)
    assert alice.ok("POST", f"/v1/groups/{b64e(group)}/commits", body) == {**first, "duplicate": True}
    # ... and one with the same seq but another payload is not
    other = alice.commit_body(group, 2, seq=alice.seqs[group])
    r = alice.call("POST", f"/v1/groups/{b64e(group)}/commits", other)
    assert (r.status_code, r.json()["error"]) == (409, "seq_reused"), r.text
    assert alice.ok("GET", f"/v1/groups/{b64e(group)}")["epoch"] == 2


def test_a_removed_member_learns_nothing_from_a_replayed_post(device) -> None:
    alice, bob = device(), device()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    old = bob.application(group, 1, b"while a member")
    assert bob.post(group, old).json() == {"seq": 2, "duplicate": False, "epoch": 1}
    assert alice.commit(group, 1, removed=[bob.device_id]).status_code == 200
    for epoch in (2, 3):
        assert alice.commit(group, epoch).status_code == 200
    # bob's retry learns the fate of his own post, not the group's epoch or head
    reply = bob.post(group, old).json()
    assert reply == {"seq": 2, "duplicate": True, "epoch": None}, reply
    changed = bob.application(group, 1, b"rewritten", seq=old.seq)
    r = bob.post(group, changed)
    assert r.status_code in (403, 409), r.text
    assert "epoch" not in r.json() and "head" not in r.json(), r.text
    # his old commit-less seq as a commit: the same
    body = bob.commit_body(group, 4, seq=old.seq)
    r = bob.call("POST", f"/v1/groups/{b64e(group)}/commits", body)
    assert r.status_code in (403, 409), r.text
    assert "epoch" not in r.json() and "head" not in r.json(), r.text
    # a device that never was a member: 403, and nothing else
    carol = device()
    r = carol.post(group, carol.application(group, 3))
    assert (r.status_code, r.json()["error"]) == (403, "not_member")
    assert set(r.json()) == {"error", "detail"}
