"""KeyPackages: publish (own device), count, claim exactly once, last resort flagged."""

from __future__ import annotations

import os
import threading

from relay_client import Device, b64d, b64e


def test_publish_count_claim(device) -> None:
    bob, alice = device(), device()
    kps = [os.urandom(100) for _ in range(3)]
    assert bob.publish(kps).json() == {"available": 3, "last_resort": False, "last_resort_claims": 0}
    assert bob.publish(kps[:1]).json()["available"] == 3  # a retried publish adds nothing
    assert bob.ok("GET", "/v1/key-packages") == {"available": 3, "last_resort": False, "last_resort_claims": 0}
    claimed = [alice.claim(bob.device_id).json() for _ in range(3)]
    assert sorted(b64d(c["key_package"]) for c in claimed) == sorted(kps)
    assert all(c["last_resort"] is False for c in claimed)
    r = alice.claim(bob.device_id)
    assert r.status_code == 404
    assert r.json()["error"] == "no_key_package"
    r = alice.claim(os.urandom(16))
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_device"


def test_last_resort_only_when_nothing_else_and_always_flagged(device) -> None:
    bob, alice = device(), device()
    regular, last = os.urandom(64), os.urandom(64)
    assert bob.publish([regular], last_resort=last).json() == {
        "available": 1,
        "last_resort": True,
        "last_resort_claims": 0,
    }
    first = alice.claim(bob.device_id).json()
    assert first == {"key_package": b64e(regular), "last_resort": False}
    for n in (1, 2):
        again = alice.claim(bob.device_id).json()
        assert again == {"key_package": b64e(last), "last_resort": True}
        assert bob.ok("GET", "/v1/key-packages")["last_resort_claims"] == n
    # a new last resort replaces the old one and resets the counter
    newer = os.urandom(64)
    assert bob.publish([], last_resort=newer).json() == {"available": 0, "last_resort": True, "last_resort_claims": 0}
    assert alice.claim(bob.device_id).json() == {"key_package": b64e(newer), "last_resort": True}


def test_publish_refusals(spawn) -> None:
    relay = spawn(
        "--max-key-package-bytes", "128", "--max-key-packages-per-request", "4", "--max-key-packages-stored", "6"
    )
    bob = Device(relay.url).setup()
    r = bob.publish([os.urandom(129)])
    assert (r.status_code, r.json()["error"]) == (413, "too_large")
    r = bob.publish([os.urandom(10) for _ in range(5)])
    assert (r.status_code, r.json()["error"]) == (413, "too_many_items")
    kp = os.urandom(10)
    r = bob.publish([kp, kp])
    assert (r.status_code, r.json()["error"]) == (400, "bad_field")
    assert bob.publish([os.urandom(10) for _ in range(4)]).status_code == 200
    r = bob.publish([os.urandom(10) for _ in range(3)])
    assert (r.status_code, r.json()["error"]) == (409, "too_many_key_packages")
    assert r.json()["available"] == 4
    r = bob.call("POST", "/v1/key-packages", {"key_packages": []})
    assert (r.status_code, r.json()["error"]) == (400, "bad_field")
    bob.close()


def test_claim_once_under_20_concurrent_claimers_on_two_processes(spawn, databases) -> None:
    db = databases.new()
    first = spawn(db=db)
    second = spawn(db=db)
    bob = Device(first.url).setup()
    kps = [os.urandom(200) for _ in range(12)]
    last = os.urandom(200)
    assert bob.publish(kps, last_resort=last).status_code == 200
    claimers = [Device((first if i % 2 else second).url).setup() for i in range(20)]
    barrier = threading.Barrier(len(claimers))
    results: list[dict] = []
    lock = threading.Lock()

    def claim(d: Device) -> None:
        barrier.wait()
        r = d.claim(bob.device_id)
        with lock:
            results.append({"status": r.status_code, **r.json()})

    threads = [threading.Thread(target=claim, args=(d,)) for d in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r["status"] == 200 for r in results), results
    regular = [b64d(r["key_package"]) for r in results if not r["last_resort"]]
    flagged = [b64d(r["key_package"]) for r in results if r["last_resort"]]
    assert sorted(regular) == sorted(kps)  # each regular KeyPackage exactly once
    assert flagged == [last] * 8  # the rest got the last resort, each time flagged
    assert bob.ok("GET", "/v1/key-packages") == {"available": 0, "last_resort": True, "last_resort_claims": 8}
    for d in [bob, *claimers]:
        d.close()
