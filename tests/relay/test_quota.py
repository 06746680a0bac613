"""Storage quotas (issue 17, item 4): the log bytes one device sent and one group holds are
capped; past a cap a post or commit is refused with a typed 409 and nothing is stored;
pruning gives the room back; a database from before the quotas is counted at start."""

from __future__ import annotations

import os
import time

from relay_client import Device, b64e
from relay_db import dump, execute

KB100 = 100_000


def quota_refusal(r, scope: str, limit: int) -> None:
    assert r.status_code == 409, r.text
    body = r.json()
    assert (body["error"], body["scope"], body["limit"]) == ("quota_exceeded", scope, limit), body


def test_device_and_group_quotas(spawn) -> None:
    relay = spawn("--max-device-bytes", "350000", "--max-group-bytes", "700000")
    alice, bob, carol = (Device(relay.url).setup() for _ in range(3))
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id, carol.device_id]).status_code == 200
    for _ in range(3):
        alice.send(group, 1, os.urandom(KB100))
    before = dump(relay.db)
    quota_refusal(alice.post(group, alice.application(group, 1, os.urandom(KB100))), "device", 350_000)
    assert dump(relay.db) == before
    # a small one still fits, and her other groups count against the same quota
    alice.send(group, 1, b"small")
    other = alice.create_group()
    quota_refusal(alice.post(other, alice.application(other, 0, os.urandom(KB100))), "device", 350_000)
    # the group's quota: bob and carol fill what is left of it
    for _ in range(3):
        bob.send(group, 1, os.urandom(KB100))
    before = dump(relay.db)
    quota_refusal(carol.post(group, carol.application(group, 1, os.urandom(KB100))), "group", 700_000)
    # a commit is counted too
    r = carol.call("POST", f"/v1/groups/{b64e(group)}/commits", carol.commit_body(group, 1, payload=os.urandom(KB100)))
    quota_refusal(r, "group", 700_000)
    assert dump(relay.db) == before
    # a duplicate is answered as before (it stores nothing)
    first = bob.application(group, 1, b"once")
    assert bob.post(group, first).status_code == 200
    assert bob.post(group, first).json()["duplicate"] is True
    for d in (alice, bob, carol):
        d.close()


def test_pruning_gives_room_back(spawn) -> None:
    relay = spawn("--max-device-bytes", "250000", "--max-retention", "0.5", "--prune-interval", "0.2")
    alice = Device(relay.url).setup()
    group = alice.create_group()
    alice.send(group, 0, os.urandom(KB100))
    alice.send(group, 0, os.urandom(KB100))
    quota_refusal(alice.post(group, alice.application(group, 0, os.urandom(KB100))), "device", 250_000)
    deadline = time.monotonic() + 30  # a hang guard: pruning runs every 0.2 s
    while True:
        r = alice.post(group, alice.application(group, 0, os.urandom(KB100)))
        if r.status_code == 200:
            break
        quota_refusal(r, "device", 250_000)
        assert time.monotonic() < deadline, "pruning never gave the room back"
        time.sleep(0.2)
    alice.close()


def test_a_database_from_before_the_quotas_is_counted(spawn, databases) -> None:
    """Migration 3 counts what the log already holds: a relay upgraded in place (here, from
    schema 2: the later migrations' tables are dropped too) applies the quotas to the bytes
    stored before."""
    db = databases.new()
    relay = spawn(db=db)
    alice = Device(relay.url).setup()
    group = alice.create_group()
    for _ in range(3):
        alice.send(group, 0, os.urandom(KB100))
    relay.stop()
    for statement in (
        "ALTER TABLE conversations DROP COLUMN stored_bytes",
        "ALTER TABLE devices DROP COLUMN stored_bytes",
        "ALTER TABLE devices DROP COLUMN key_packages_claimed",
        "ALTER TABLE mailbox DROP COLUMN bytes",
        "DROP INDEX mailbox_by_time",
        "DROP TABLE device_logs",
        "DROP TABLE links",
        "DROP TABLE group_infos",
        "ALTER TABLE devices DROP COLUMN revoked_at_ms",
        "DELETE FROM schema_version WHERE version >= 3",
    ):
        execute(db, statement)
    again = spawn("--max-device-bytes", "350000", db=db)
    alice.http.base_url = again.url
    alice.login()
    quota_refusal(alice.post(group, alice.application(group, 0, os.urandom(KB100))), "device", 350_000)
    alice.close()
