"""Races: one commit per epoch, gap-free sequence numbers, across relay processes."""

from __future__ import annotations

import threading

from relay_client import Device, b64e


def test_two_concurrent_commits_for_one_epoch(spawn, databases) -> None:
    db = databases.new()
    relays = [spawn(db=db), spawn(db=db)]
    alice = Device(relays[0].url).setup()
    bob = Device(relays[1].url).setup()
    group = alice.create_group()
    assert alice.commit(group, 0, added=[bob.device_id]).status_code == 200
    epoch = 1
    for _ in range(15):
        bodies = {d: d.commit_body(group, epoch) for d in (alice, bob)}
        barrier = threading.Barrier(2)
        replies: dict[Device, object] = {}

        def commit(d: Device) -> None:
            barrier.wait()  # noqa: B023
            replies[d] = d.call("POST", f"/v1/groups/{b64e(group)}/commits", bodies[d])  # noqa: B023

        threads = [threading.Thread(target=commit, args=(d,)) for d in (alice, bob)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in replies.values())
        assert statuses == [200, 409], [r.text for r in replies.values()]
        loser = next(r for r in replies.values() if r.status_code == 409).json()
        assert loser["error"] == "stale_commit"
        assert loser["epoch"] == epoch + 1
        epoch += 1
    info = alice.ok("GET", f"/v1/groups/{b64e(group)}")
    assert info["epoch"] == 16
    assert info["head"] == 16
    alice.close()
    bob.close()


def test_concurrent_posts_get_gap_free_sequence_numbers(spawn, databases) -> None:
    db = databases.new()
    relays = [spawn(db=db), spawn(db=db)]
    owner = Device(relays[0].url).setup()
    group = owner.create_group()
    members = [Device(relays[i % 2].url).setup() for i in range(6)]
    assert owner.commit(group, 0, added=[m.device_id for m in members]).status_code == 200
    seqs: list[int] = []
    lock = threading.Lock()

    def run(d: Device) -> None:
        for i in range(25):
            seq = d.send(group, 1, f"{d.id}:{i}".encode())
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(2, 2 + 6 * 25))
    log = owner.fetch_all(group)
    assert [s for s, _ in log] == list(range(1, 2 + 6 * 25))
    for d in [owner, *members]:
        d.close()
