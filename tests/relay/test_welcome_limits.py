"""Welcome mailboxes are bounded (issue 17, item 1): a Welcome exists only with a commit
that adds its device, each Welcome has a size limit, each device's mailbox a count and a
byte cap, replies and stream pushes are paged by bytes, and Welcomes go once acknowledged
or expired."""

from __future__ import annotations

import os
import time

from ping_web.core.envelope import Hlc, MessageKind

from relay_client import Device, b64d, b64e, recv_json, roster_content
from relay_db import dump

RATES = ["--rate-per-second", "100000", "--rate-burst", "100000", "--anon-rate-per-second", "100000"]
RATES += ["--anon-burst", "100000"]


def invite(committer: Device, target: Device, welcome_bytes: int = 64):
    """A fresh group of ``committer`` and a commit adding ``target`` with a Welcome of about
    ``welcome_bytes``; the reply."""
    group = committer.create_group()
    seq, hlc = committer.next_seq(group), Hlc(int(time.time() * 1000), 0)
    commit = committer.handshake(MessageKind.COMMIT, group, 0, seq, hlc, os.urandom(48))
    welcome = committer.handshake(MessageKind.WELCOME, group, 1, seq, hlc, os.urandom(welcome_bytes))
    added = [target.device_id]
    signature = committer.sign("relay-roster", roster_content(group, 0, commit.content_hash, added, []))
    body = {
        "commit": b64e(commit.encode()),
        "welcome": {"envelope": b64e(welcome.encode()), "joiners": [target.id]},
        "roster": {"added": [target.id], "removed": [], "signature": b64e(signature)},
    }
    return committer.call("POST", f"/v1/groups/{b64e(group)}/commits", body)


def all_welcomes(device: Device, limit: int = 1000) -> list[list[dict]]:
    """Every page of ``GET /v1/welcomes``, following ``more``."""
    pages, after = [], 0
    while True:
        reply = device.ok("GET", "/v1/welcomes", params={"after": after, "limit": limit})
        pages.append(reply["welcomes"])
        if not reply["more"]:
            return pages
        after = reply["welcomes"][-1]["id"]


def test_one_device_cannot_flood_another_mailbox(spawn) -> None:
    """The default cap (100 Welcomes per mailbox): the 101st invitation is refused (groups
    made as fast as it likes, so that only the mailbox limits it)."""
    relay = spawn(*RATES, "--group-rate-per-second", "100000", "--group-burst", "100000", fast=False)
    mallory, bob = Device(relay.url).setup(), Device(relay.url).setup()
    for _ in range(100):
        assert invite(mallory, bob).status_code == 200
    before = dump(relay.db)
    r = invite(mallory, bob)
    assert (r.status_code, r.json()["error"]) == (409, "mailbox_full"), r.text
    assert r.json()["device_id"] == bob.device_id.hex()
    after = dump(relay.db)
    for table in ("conversations", "members", "rate_buckets"):  # the fresh group was registered
        after.pop(table), before.pop(table)
    assert after == before
    mallory.close()
    bob.close()


def test_welcome_size_and_mailbox_caps(spawn) -> None:
    relay = spawn(
        "--max-welcome-bytes", "100000", "--max-mailbox-welcomes", "4", "--max-mailbox-bytes", "200000"
    )  # fmt: skip
    mallory, bob, carol = (Device(relay.url).setup() for _ in range(3))
    r = invite(mallory, bob, 100_001)
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (413, "envelope_too_large", "welcome.envelope")
    assert r.json()["limit"] == 100_000
    # by bytes: two Welcomes of 90 kB fit, a third does not
    assert invite(mallory, bob, 90_000).status_code == 200
    assert invite(mallory, bob, 90_000).status_code == 200
    r = invite(mallory, bob, 90_000)
    assert (r.status_code, r.json()["error"]) == (409, "mailbox_full"), r.text
    # by count
    for _ in range(2):
        assert invite(mallory, bob, 100).status_code == 200
    r = invite(mallory, bob, 100)
    assert (r.status_code, r.json()["error"]) == (409, "mailbox_full"), r.text
    assert len([w for page in all_welcomes(bob) for w in page]) == 4
    # carol's mailbox is her own
    assert invite(mallory, carol, 90_000).status_code == 200
    # an acknowledged Welcome is gone and makes room
    first = all_welcomes(bob)[0][0]["id"]
    assert bob.ok("POST", "/v1/welcomes/ack", {"ids": [first]}) == {"acked": 1}
    assert invite(mallory, bob, 100).status_code == 200
    for d in (mallory, bob, carol):
        d.close()


def test_no_welcome_without_its_commit(device) -> None:
    alice, bob = device(), device()
    group = alice.create_group()
    welcome = alice.handshake(MessageKind.WELCOME, group, 1, 1, Hlc(1, 0), b"welcome")
    r = alice.post(group, welcome)
    assert (r.status_code, r.json()["error"]) == (400, "wrong_kind")
    body = alice.commit_body(group, 0, [bob.device_id])
    body["roster"]["added"] = []  # a Welcome for a commit that adds nobody
    r = alice.call("POST", f"/v1/groups/{b64e(group)}/commits", body)
    assert r.status_code in (400, 403), r.text
    assert bob.ok("GET", "/v1/welcomes")["welcomes"] == []


def test_welcome_pages_are_bounded_in_bytes(spawn) -> None:
    relay = spawn("--page-max-bytes", "200000", "--max-mailbox-bytes", "2000000")
    mallory, bob = Device(relay.url).setup(), Device(relay.url).setup()
    for _ in range(7):
        assert invite(mallory, bob, 90_000).status_code == 200
    pages = all_welcomes(bob)
    assert len(pages) >= 4, [len(p) for p in pages]
    for page in pages:
        assert sum(len(b64d(w["envelope"])) for w in page) <= 200_000 or len(page) == 1
    ids = [w["id"] for page in pages for w in page]
    assert len(ids) == 7 and ids == sorted(set(ids))
    # the stream pushes every one of them, once, in pages of its own
    with bob.stream(max_size=None) as ws:
        assert recv_json(ws)["type"] == "ready"
        pushed = [recv_json(ws) for _ in range(7)]
    assert sorted(f["id"] for f in pushed) == ids and {f["type"] for f in pushed} == {"welcome"}
    mallory.close()
    bob.close()


def test_welcomes_expire(spawn) -> None:
    relay = spawn("--welcome-ttl", "1", "--prune-interval", "0.2")
    mallory, bob = Device(relay.url).setup(), Device(relay.url).setup()
    assert invite(mallory, bob, 1000).status_code == 200
    assert len(bob.ok("GET", "/v1/welcomes")["welcomes"]) == 1
    deadline = time.monotonic() + 30  # a hang guard, not a timing assertion
    while bob.ok("GET", "/v1/welcomes")["welcomes"]:
        assert time.monotonic() < deadline, "the Welcome never expired"
        time.sleep(0.2)
    content = dump(relay.db)
    assert content["mailbox"] == [] and content["welcomes"] == []
    mallory.close()
    bob.close()
