"""SIGKILL the relay while posts run, start it again on the same database: nothing
acknowledged is lost, and the log goes on without a gap."""

from __future__ import annotations

import threading
import time

import httpx

from relay_client import Device, b64d


def test_sigkill_loses_nothing_acknowledged(spawn, databases) -> None:
    db = databases.new()
    relay = spawn(db=db)
    owner = Device(relay.url).setup()
    members = [Device(relay.url).setup() for _ in range(3)]
    group = owner.create_group()
    assert owner.commit(group, 0, added=[m.device_id for m in members]).status_code == 200
    kps = [bytes([i]) * 40 for i in range(1, 5)]
    assert members[0].publish(kps).status_code == 200
    claimed = owner.claim(members[0].device_id).json()["key_package"]
    acked: dict[int, bytes] = {}
    unacked: list[tuple[Device, object]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def post(d: Device) -> None:
        while not stop.is_set():
            envelope = d.application(group, 1, b"x" * 200)
            try:
                r = d.post(group, envelope)
            except httpx.HTTPError:
                with lock:
                    unacked.append((d, envelope))
                return
            assert r.status_code == 200, r.text
            with lock:
                acked[r.json()["seq"]] = envelope.encode()

    threads = [threading.Thread(target=post, args=(d,)) for d in [owner, *members]]
    for t in threads:
        t.start()
    time.sleep(1.0)
    relay.kill()  # SIGKILL while requests are in flight
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 20

    again = spawn(db=db)
    for d in [owner, *members]:
        d.http = httpx.Client(base_url=again.url, timeout=60)  # same tokens: they are in the database
    log = dict(owner.fetch_all(group))
    assert sorted(log) == list(range(1, len(log) + 1))  # gap-free
    for seq, envelope in acked.items():
        assert log[seq] == envelope
    # a post whose reply was lost: if it was stored, the retry gets its seq back; else it is stored now
    for d, envelope in unacked:
        r = d.post(group, envelope)
        assert r.status_code == 200
        seq = r.json()["seq"]
        assert owner.fetch_all(group, seq - 1)[0] == (seq, envelope.encode())
    head = max(owner.fetch_all(group))[0]
    assert owner.send(group, 1) == head + 1
    # KeyPackages: the claimed one is gone for good, the others are still there once each
    rest = [owner.claim(members[0].device_id).json()["key_package"] for _ in range(3)]
    assert sorted(b64d(k) for k in [claimed, *rest]) == sorted(kps)
    assert owner.claim(members[0].device_id).status_code == 404
    assert members[1].ok("GET", "/v1/welcomes")["welcomes"][0]["commit_seq"] == 1
    for d in [owner, *members]:
        d.close()
