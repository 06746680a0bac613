"""The wasm module from Python: real OpenMLS in real wasm under real Pyodide."""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
def test_two_parties_join_through_welcome_and_talk_both_ways(selenium):
    from ping_web.mls.openmls import MlsRuntime, ProcessedKind

    alice_p = MlsRuntime.load().provider()
    bob_p = MlsRuntime.load().provider()
    alice = alice_p.create_identity(b"alice")
    bob = bob_p.create_identity(b"bob")
    group_id = bytes(range(16))

    a = alice_p.create_group(alice, group_id)
    _commit, welcome = a.add_members([bob.key_package()])
    assert a.has_pending_commit and a.epoch == 0
    a.merge_pending_commit()
    b = bob_p.join_group(bob, welcome)
    assert a.epoch == b.epoch == 1
    assert b.group_id == group_id
    assert sorted(m.identity for m in a.members()) == [b"alice", b"bob"]
    assert [m.identity for m in b.members() if m.leaf_index == b.own_leaf_index] == [b"bob"]

    for i in range(3):
        got = b.process_message(a.create_message(f"a->b {i}".encode()))
        assert (got.kind, got.plaintext, got.sender_leaf) == (ProcessedKind.APPLICATION, f"a->b {i}".encode(), 0)
        got = a.process_message(b.create_message(f"b->a {i}".encode()))
        assert got.plaintext == f"b->a {i}".encode() and got.sender_leaf == b.own_leaf_index


@run_in_pyodide(packages=["ping_web"])
def test_added_then_removed_member_can_no_longer_decrypt(selenium):
    import pytest

    from ping_web.errors import PingError
    from ping_web.mls.openmls import MlsRuntime, ProcessedKind

    providers = [MlsRuntime.load().provider() for _ in range(3)]
    ids = [p.create_identity(name) for p, name in zip(providers, [b"alice", b"bob", b"carol"], strict=True)]
    a = providers[0].create_group(ids[0], b"G" * 16)
    _, welcome = a.add_members([ids[1].key_package()])
    a.merge_pending_commit()
    b = providers[1].join_group(ids[1], welcome)

    commit, welcome = a.add_members([ids[2].key_package()])
    a.merge_pending_commit()
    assert b.process_message(commit).kind == ProcessedKind.COMMIT
    c = providers[2].join_group(ids[2], welcome)
    assert a.epoch == b.epoch == c.epoch == 2
    assert c.process_message(b.create_message(b"hi carol")).plaintext == b"hi carol"

    carol_leaf = c.own_leaf_index
    commit = a.remove_members([carol_leaf])
    a.merge_pending_commit()
    assert b.process_message(commit).still_member
    removed = c.process_message(commit)
    assert removed.kind == ProcessedKind.COMMIT and not removed.still_member and not c.is_active
    assert sorted(m.identity for m in a.members()) == [b"alice", b"bob"]

    secret = a.create_message(b"carol must not read this")
    assert b.process_message(secret).plaintext == b"carol must not read this"
    with pytest.raises(PingError):
        c.process_message(secret)


@run_in_pyodide(packages=["ping_web"])
def test_export_secret_agrees_across_members_and_changes_with_epoch(selenium):
    import pytest

    from ping_web.errors import InvalidInput
    from ping_web.mls.openmls import MlsRuntime

    pa, pb = MlsRuntime.load().provider(), MlsRuntime.load().provider()
    alice, bob = pa.create_identity(b"alice"), pb.create_identity(b"bob")
    a = pa.create_group(alice, b"E" * 16)
    _, welcome = a.add_members([bob.key_package()])
    a.merge_pending_commit()
    b = pb.join_group(bob, welcome)

    s1a = a.export_secret("ping/test", b"ctx", 32)
    assert s1a == b.export_secret("ping/test", b"ctx", 32) and len(s1a) == 32
    assert s1a != a.export_secret("ping/other", b"ctx", 32)
    assert s1a != a.export_secret("ping/test", b"ctx2", 32)

    commit = b.self_update()
    b.merge_pending_commit()
    a.process_message(commit)
    s2 = a.export_secret("ping/test", b"ctx", 32)
    assert s2 == b.export_secret("ping/test", b"ctx", 32) and s2 != s1a
    for bad in (0, 1025, -1):
        with pytest.raises(InvalidInput):
            a.export_secret("ping/test", b"", bad)
    assert len(a.export_secret("ping/test", b"", 1024)) == 1024


@run_in_pyodide(packages=["ping_web"])
def test_checkpoint_restores_into_a_fresh_instance_and_messaging_continues(selenium):
    from ping_web.mls.openmls import MlsRuntime

    pa, pb = MlsRuntime.load().provider(), MlsRuntime.load().provider()
    alice, bob = pa.create_identity(b"alice"), pb.create_identity(b"bob")
    a = pa.create_group(alice, b"R" * 16)
    _, welcome = a.add_members([bob.key_package()])
    a.merge_pending_commit()
    b = pb.join_group(bob, welcome)
    b.process_message(a.create_message(b"before"))

    # Everything Bob's provider ever wrote, as a storage backend would hold it.
    stored: dict[bytes, bytes] = {}
    for key, value in pb.checkpoint():
        if value is None:
            stored.pop(key, None)
        else:
            stored[key] = value
    assert not pb.has_changes and len(stored) == pb.entry_count

    fresh = MlsRuntime.load().provider()  # a new wasm instance with its own memory
    fresh.restore(stored.items())
    assert not fresh.has_changes and fresh.entry_count == len(stored)
    bob2 = fresh.load_identity(b"bob", bob.public_key)
    b2 = fresh.load_group(bob2, b"R" * 16)
    assert b2 is not None and b2.epoch == b.epoch
    assert fresh.load_group(bob2, b"X" * 16) is None

    assert b2.process_message(a.create_message(b"after restore")).plaintext == b"after restore"
    assert a.process_message(b2.create_message(b"bob is back")).plaintext == b"bob is back"

    # Per-group export/import/drop.
    entries = fresh.group_entries(b"R" * 16)
    assert entries and all(k.startswith(fresh.group_prefix(b"R" * 16)) for k, _ in entries)
    fresh.checkpoint()
    fresh.drop_group(b"R" * 16)
    dropped = fresh.checkpoint()
    assert {k for k, v in dropped if v is None} == {k for k, _ in entries}
    assert fresh.load_group(bob2, b"R" * 16) is None


@run_in_pyodide(packages=["ping_web"])
def test_malformed_bytes_give_ping_errors_and_change_nothing(selenium):
    import random

    import pytest

    from ping_web.errors import PingError
    from ping_web.mls.openmls import MlsRuntime

    rng = random.Random(7)
    pa, pb, pc = (MlsRuntime.load().provider() for _ in range(3))
    alice, bob, carol = pa.create_identity(b"alice"), pb.create_identity(b"bob"), pc.create_identity(b"carol")
    a = pa.create_group(alice, b"M" * 16)
    _, welcome = a.add_members([bob.key_package()])
    a.merge_pending_commit()
    b = pb.join_group(bob, welcome)
    pa.checkpoint(), pb.checkpoint(), pc.checkpoint()

    good_kp = carol.key_package()
    pc.checkpoint()
    good_msg = a.create_message(b"payload")
    pa.checkpoint()
    _, good_welcome = a.add_members([good_kp])
    a.clear_pending_commit()
    pa.checkpoint()

    def variants(data: bytes):
        yield b""
        yield data[: len(data) // 2]
        yield data[:-1]
        yield data + b"\x00"
        yield b"\xff" * 8
        yield bytes(2_000_000)
        yield rng.randbytes(len(data))
        for _ in range(25):
            flipped = bytearray(data)
            i = rng.randrange(len(flipped))
            flipped[i] ^= 1 << rng.randrange(8)
            yield bytes(flipped)

    epoch_a, epoch_b = a.epoch, b.epoch
    for bad in variants(good_kp):
        with pytest.raises(PingError):
            a.add_members([bad])
        assert not a.has_pending_commit and not pa.has_changes
    for bad in variants(good_msg):
        with pytest.raises(PingError):
            b.process_message(bad)
        assert not pb.has_changes
    for bad in variants(good_welcome):
        with pytest.raises(PingError):
            pc.join_group(carol, bad)
        assert not pc.has_changes
    with pytest.raises(PingError):
        b.process_message(good_kp)  # right format, wrong kind
    assert (a.epoch, b.epoch) == (epoch_a, epoch_b)

    # Everything still works afterwards, including the untouched originals.
    assert b.process_message(good_msg).plaintext == b"payload"
    assert b.process_message(a.create_message(b"still fine")).plaintext == b"still fine"
    assert a.process_message(b.create_message(b"yes")).plaintext == b"yes"


@run_in_pyodide(packages=["ping_web"])
def test_pending_commit_blocks_other_commits_until_merged_or_discarded(selenium):
    import pytest

    from ping_web.errors import NoPendingCommit, PendingCommit
    from ping_web.mls.openmls import MlsRuntime

    pa, pb = MlsRuntime.load().provider(), MlsRuntime.load().provider()
    alice, bob = pa.create_identity(b"alice"), pb.create_identity(b"bob")
    a = pa.create_group(alice, b"P" * 16)
    _, welcome = a.add_members([bob.key_package()])
    a.merge_pending_commit()
    b = pb.join_group(bob, welcome)

    with pytest.raises(NoPendingCommit):
        a.merge_pending_commit()
    a.self_update()
    with pytest.raises(PendingCommit):
        a.self_update()
    with pytest.raises(PendingCommit):
        a.add_members([pb.create_identity(b"bob2").key_package()])
    # Application messages still go out in the current epoch while the commit is pending.
    assert b.process_message(a.create_message(b"meanwhile")).plaintext == b"meanwhile"
    a.clear_pending_commit()
    assert a.epoch == 1
    # Bob's commit wins the epoch; Alice, having discarded hers, applies it.
    commit = b.self_update()
    b.merge_pending_commit()
    a.process_message(commit)
    assert a.epoch == b.epoch == 2
    assert b.process_message(a.create_message(b"in sync")).plaintext == b"in sync"


@run_in_pyodide(packages=["ping_web"])
def test_bad_arguments_are_invalid_input(selenium):
    import pytest

    from ping_web.errors import InvalidInput, MlsError
    from ping_web.mls.openmls import MlsRuntime

    p = MlsRuntime.load().provider()
    alice = p.create_identity(b"alice")
    for bad_id in (b"", b"x" * 15, b"x" * 17):
        with pytest.raises(InvalidInput):
            p.create_group(alice, bad_id)
    with pytest.raises(InvalidInput):
        p.create_identity(b"")
    g = p.create_group(alice, b"A" * 16)
    with pytest.raises(InvalidInput):
        p.create_group(alice, b"A" * 16)
    with pytest.raises(InvalidInput):
        g.remove_members([5])
    with pytest.raises(InvalidInput):
        g.add_members([])
    with pytest.raises(MlsError) as info:
        p.load_identity(b"alice", b"\x01" * 32)
    assert info.value.code == "not_found"
    with pytest.raises(InvalidInput):
        g.create_message("text, not bytes")
