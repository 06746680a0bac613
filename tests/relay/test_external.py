"""GroupInfo kept with commits, and external commits (docs/relay.md 5.4): who may read a
group's GroupInfo, and who may (re)join a group by external commit. Hostile clients first."""

from __future__ import annotations

import os

from relay_client import b64d, b64e


def commit_with(device, group: bytes, epoch: int, **extra):  # type: ignore[no-untyped-def]
    body = device.commit_body(group, epoch)
    body.update(extra)
    return device.call("POST", f"/v1/groups/{b64e(group)}/commits", body)


def test_a_commits_group_info_is_kept_for_members_and_their_users_devices(device) -> None:
    user = os.urandom(6)
    alice, bob, stranger = device(), device(user), device()
    group = alice.create_group()
    path = f"/v1/groups/{b64e(group)}/group-info"
    r = alice.call("GET", path)
    assert r.status_code == 404 and r.json()["error"] == "no_group_info"
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    info = os.urandom(300)
    assert commit_with(alice, group, 1, group_info=b64e(info)).status_code == 200
    for reader in (alice, bob, device(user)):  # a member, and a new device of a member's user
        r = reader.call("GET", path)
        assert r.status_code == 200 and r.json() == {"epoch": 2, "group_info": b64e(info)}, r.text
    r = stranger.call("GET", path)
    assert r.status_code == 403 and r.json()["error"] == "not_member"
    r = commit_with(alice, group, 2, group_info=7)
    assert r.status_code == 400


def test_who_may_join_by_external_commit(device) -> None:
    user = os.urandom(6)
    alice, bob, stranger = device(), device(user), device()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    # an outsider, even claiming an external commit: not a member, and no device of its user is
    r = commit_with(stranger, group, 1, external=True)
    assert r.status_code == 403 and r.json()["error"] == "not_member"
    # external commits add and remove no other device and carry no Welcome
    r = stranger.call("POST", f"/v1/groups/{b64e(group)}/commits",
                      {**stranger.commit_body(group, 1, added=[alice.device_id]), "external": True})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "bad_roster"
    r = commit_with(bob, group, 1, external="yes")
    assert r.status_code == 400
    # a new device of bob's user joins, and is a member from its commit on
    laptop = device(user)
    r = commit_with(laptop, group, 1, external=True, group_info=b64e(b"info"))
    assert r.status_code == 200 and r.json()["epoch"] == 2, r.text
    members = alice.ok("GET", f"/v1/groups/{b64e(group)}")["members"]
    assert laptop.id in [m["device_id"] for m in members]
    assert [seq for seq, _ in laptop.fetch_all(group)] == [r.json()["seq"]]
    # a member rejoining (a stale copy): an external commit at the current epoch, like any commit
    r = commit_with(bob, group, 1, external=True)
    assert r.status_code == 409 and r.json()["error"] == "stale_commit"
    assert commit_with(bob, group, 2, external=True).status_code == 200
    # a revoked device of a member's user may not
    bob.revoke_device(laptop)
    gone = device(user)
    bob.revoke_device(gone)
    r = commit_with(gone, group, 3, external=True)
    assert r.status_code == 401  # its token went with the revocation
    assert b64d(alice.ok("GET", f"/v1/groups/{b64e(group)}/group-info")["group_info"]) == b"info"


def test_a_device_lists_the_groups_its_user_is_in(device) -> None:
    user = os.urandom(6)
    phone, alice, stranger = device(user), device(), device()
    mine, theirs = alice.create_group(), stranger.create_group()
    assert alice.commit(mine, 0, added=[phone.device_id]).status_code == 200
    laptop = device(user)  # a new device of the user: not in any group yet
    assert laptop.ok("GET", "/v1/user-groups")["groups"] == [b64e(mine)]
    assert b64e(theirs) not in phone.ok("GET", "/v1/user-groups")["groups"]
    assert alice.commit(mine, 1, removed=[phone.device_id]).status_code == 200
    assert laptop.ok("GET", "/v1/user-groups")["groups"] == []
