"""KeyPackages cannot be drained (issue 17, item 3): claims are limited per target device
and per claimer-target pair, the last-resort KeyPackage goes out at most a few times per
window, a refused claim takes nothing, and the owner is told when its stock runs low."""

from __future__ import annotations

import os

from relay_client import Device, recv_json
from relay_db import dump

RATES = ["--rate-per-second", "100000", "--rate-burst", "100000", "--anon-rate-per-second", "100000"]
RATES += ["--anon-burst", "100000"]
SLOW = "0.0001"  # per second: nothing comes back during a test


def limited(r, scope: str) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert (body["error"], body["scope"]) == ("claims_limited", scope), body
    assert body["retry_after"] == int(r.headers["retry-after"]) >= 1


def test_one_device_cannot_drain_another_by_default(spawn) -> None:
    """The default limits: an unrelated device gets a few of 300 KeyPackages, not 299."""
    relay = spawn(*RATES, fast=False)
    bob, mallory = Device(relay.url).setup(), Device(relay.url).setup()
    for _ in range(3):
        assert bob.publish([os.urandom(100) for _ in range(100)]).status_code == 200
    assert bob.publish([], last_resort=os.urandom(100)).status_code == 200
    statuses = [mallory.claim(bob.device_id).status_code for _ in range(299)]
    assert statuses.count(200) <= 10, statuses.count(200)
    assert set(statuses) == {200, 429}
    # fresh devices share the target's limit, and the last resort is not handed out 179 times
    fresh = [Device(relay.url).setup() for _ in range(3)]
    got = [d.claim(bob.device_id).json() for d in fresh for _ in range(60)]
    assert sum(1 for g in got if g.get("last_resort")) <= 3
    assert bob.ok("GET", "/v1/key-packages")["available"] >= 250
    for d in (bob, mallory, *fresh):
        d.close()


def test_claim_limits_per_pair_target_and_last_resort(spawn) -> None:
    relay = spawn(
        "--claim-burst-per-pair", "3", "--claim-rate-per-pair", SLOW,
        "--claim-burst-per-target", "5", "--claim-rate-per-target", SLOW,
        "--last-resort-burst", "2", "--last-resort-rate", SLOW,
    )  # fmt: skip
    bob, mallory, eve, dan = (Device(relay.url).setup() for _ in range(4))
    assert bob.publish([os.urandom(100) for _ in range(4)], last_resort=os.urandom(100)).status_code == 200
    assert [mallory.claim(bob.device_id).status_code for _ in range(3)] == [200] * 3
    before = dump(relay.db)
    limited(mallory.claim(bob.device_id), "pair")
    assert dump(relay.db) == before  # a refused claim takes nothing and spends nothing
    # the fourth regular one, then the last resort (its own limit: 2 per window)
    first = eve.claim(bob.device_id).json()
    assert first["last_resort"] is False
    assert eve.claim(bob.device_id).json()["last_resort"] is True  # the target's 5th claim
    limited(dan.claim(bob.device_id), "target")  # the target's limit: 5 per window
    assert bob.ok("GET", "/v1/key-packages") == {"available": 0, "last_resort": True, "last_resort_claims": 1}
    for d in (bob, mallory, eve, dan):
        d.close()


def test_last_resort_is_limited(spawn) -> None:
    relay = spawn("--last-resort-burst", "2", "--last-resort-rate", SLOW)
    bob = Device(relay.url).setup()
    assert bob.publish([], last_resort=os.urandom(100)).status_code == 200
    claimers = [Device(relay.url).setup() for _ in range(3)]
    assert [c.claim(bob.device_id).json()["last_resort"] for c in claimers[:2]] == [True, True]
    limited(claimers[2].claim(bob.device_id), "last_resort")
    assert bob.ok("GET", "/v1/key-packages")["last_resort_claims"] == 2
    for d in (bob, *claimers):
        d.close()


def test_owner_is_told_when_its_stock_runs_low(spawn) -> None:
    relay = spawn("--key-packages-low", "3")
    bob, alice = Device(relay.url).setup(), Device(relay.url).setup()
    assert bob.publish([os.urandom(100) for _ in range(5)], last_resort=os.urandom(100)).status_code == 200
    with bob.stream() as ws:
        assert recv_json(ws)["type"] == "ready"
        for _ in range(2):
            assert alice.claim(bob.device_id).status_code == 200  # 3 left: not low yet
        assert alice.claim(bob.device_id).status_code == 200  # 2 left
        frame = recv_json(ws)
        assert frame == {
            "type": "key_packages_low",
            "available": 2,
            "last_resort": True,
            "last_resort_claims": 0,
            "threshold": 3,
        }, frame
    with bob.stream() as ws:  # a connection that starts low hears it at once
        assert recv_json(ws)["type"] == "ready"
        assert recv_json(ws)["type"] == "key_packages_low"
    assert bob.publish([os.urandom(100) for _ in range(5)]).status_code == 200
    with bob.stream() as ws:  # restocked: nothing to say
        assert recv_json(ws)["type"] == "ready"
        ws.send('{"type": "ping"}')
        assert recv_json(ws) == {"type": "pong"}
    bob.close()
    alice.close()
