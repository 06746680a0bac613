from __future__ import annotations


def test_two_devices_talk(device) -> None:
    alice, bob = device(), device()
    group = alice.create_group()
    r = alice.commit(group, 0, added=[bob.device_id])
    assert r.status_code == 200, r.text
    assert r.json() == {"seq": 1, "duplicate": False, "epoch": 1}
    welcomes = bob.ok("GET", "/v1/welcomes")["welcomes"]
    assert len(welcomes) == 1 and welcomes[0]["commit_seq"] == 1
    seq = bob.send(group, 1, b"hi alice")
    assert seq == 2
    entries = alice.fetch_all(group)
    assert [s for s, _ in entries] == [1, 2]
