"""The in-memory engine keeps the MlsEngine rules the conversation logic relies on."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_engine import MAX_PAST_EPOCHS, MemoryEngine, MemoryGroup, MemoryNetwork

from ping_web.core.engine import MlsEngine, MlsGroup, ProcessedKind
from ping_web.errors import (
    ContentHashMismatch,
    DecodeError,
    HeaderMismatch,
    InvalidInput,
    MlsError,
    NoPendingCommit,
    NotAMember,
    PendingCommit,
    PingError,
    WrongEpoch,
)

GID = b"group-id-16bytes"


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def trio() -> tuple[MemoryNetwork, list[MemoryEngine], list[MemoryGroup]]:
    """alice creates the group and adds bob and carol in one commit (epoch 1)."""
    net = MemoryNetwork()
    engines = [MemoryEngine.new(net, user) for user in (b"alice", b"bob", b"carol")]
    alice = engines[0].create_group(GID)
    _, welcome = alice.add_members([engines[1].key_package(), engines[2].key_package()], b"")
    alice.merge_pending_commit()
    return net, engines, [alice, engines[1].join_group(welcome), engines[2].join_group(welcome)]


def commit_to_all(author: MemoryGroup, commit: bytes, others: list[MemoryGroup]) -> None:
    author.merge_pending_commit()
    for group in others:
        assert group.process_message(commit, b"", b"").kind is ProcessedKind.COMMIT


def test_it_is_an_mls_engine() -> None:
    net = MemoryNetwork()
    engine: MlsEngine = MemoryEngine.new(net, b"alice")
    group: MlsGroup = engine.create_group(GID)
    assert group.epoch == 0 and group.own_leaf_index == 0 and group.is_active
    assert [(m.leaf_index, m.identity) for m in group.members()] == [(0, b"alice")]
    with pytest.raises(InvalidInput):
        engine.create_group(GID)
    with pytest.raises(InvalidInput):
        engine.create_group(b"short")


def test_join_and_key_packages() -> None:
    net, (a, b, c), (ga, gb, gc) = trio()
    assert ga.epoch == gb.epoch == gc.epoch == 1
    assert [(m.leaf_index, m.identity) for m in gc.members()] == [(0, b"alice"), (1, b"bob"), (2, b"carol")]
    assert (gb.own_leaf_index, gc.own_leaf_index) == (1, 2)
    assert ga.export_secret("x", b"", 32) == gb.export_secret("x", b"", 32) == gc.export_secret("x", b"", 32)

    package = MemoryEngine.new(net, b"dave")
    kp = package.key_package()
    assert a.inspect_key_package(kp) == (b"dave", package.signature_key)
    with pytest.raises(DecodeError):
        a.inspect_key_package(kp[:-1])
    with pytest.raises(MlsError):  # a KeyPackage of another network does not verify
        a.inspect_key_package(MemoryEngine.new(MemoryNetwork(b"elsewhere"), b"eve").key_package())
    _, welcome = ga.add_members([kp], b"")
    ga.merge_pending_commit()
    gd = package.join_group(welcome)
    assert gd.epoch == 2 and gd.own_leaf_index == 3
    # A KeyPackage is one-time; a device joins a group once; a Welcome is for its KeyPackages only.
    package.drop_group(GID)
    with pytest.raises(MlsError):
        package.join_group(welcome)
    with pytest.raises(MlsError):
        b.join_group(welcome)
    with pytest.raises(InvalidInput):
        b.join_group(kp)
    # A signature key is in a group once.
    with pytest.raises(MlsError):
        ga.add_members([c.key_package()], b"")


def test_one_pending_commit_until_merged_or_cleared() -> None:
    _, (a, _, _), (ga, gb, gc) = trio()
    commit = ga.self_update(b"aad")
    for stage in (lambda: ga.self_update(b""), lambda: ga.remove_members([1], b""),
                  lambda: ga.add_members([MemoryEngine.new(a.network, b"x").key_package()], b"")):  # fmt: skip
        with pytest.raises(PendingCommit):
            stage()
    # Application messages may be sent meanwhile, in the current epoch.
    message = ga.create_message(b"still epoch 1", b"")
    assert gb.process_message(message, b"", b"").plaintext == b"still epoch 1"
    ga.clear_pending_commit()
    with pytest.raises(NoPendingCommit):
        ga.clear_pending_commit()
    with pytest.raises(NoPendingCommit):
        ga.merge_pending_commit()
    assert ga.epoch == 1
    # Two commits of one epoch are two branches: members who merged different ones fork.
    assert gb.process_message(commit, b"aad", b"").epoch == 2
    commit_to_all(ga, ga.self_update(b""), [gc])
    assert ga.epoch == gb.epoch == 2 and ga.export_secret("x", b"", 16) != gb.export_secret("x", b"", 16)
    with pytest.raises(MlsError):
        gb.process_message(ga.create_message(b"forked", b""), b"", b"")


def test_commits_are_for_the_current_epoch_and_merge() -> None:
    _, _, (ga, gb, gc) = trio()
    first = gb.self_update(b"")
    commit_to_all(gb, first, [ga])
    second = ga.self_update(b"")
    with pytest.raises(WrongEpoch):  # carol has not seen the first commit yet
        gc.process_message(second, b"", b"")
    assert gc.process_message(first, b"", b"").epoch == 2
    with pytest.raises(WrongEpoch):  # and never again
        gc.process_message(first, b"", b"")
    assert ga.process_message(second, b"", b"").kind is ProcessedKind.OWN_MESSAGE and ga.has_pending_commit
    ga.merge_pending_commit()
    assert gc.process_message(second, b"", b"").epoch == gb.process_message(second, b"", b"").epoch == 3
    # Another member's commit for our epoch wins over our pending one: merging it drops ours.
    mine = gb.self_update(b"")
    theirs = gc.self_update(b"")
    assert gb.process_message(theirs, b"", b"").epoch == 4 and not gb.has_pending_commit
    assert mine != theirs


def test_a_removed_member_learns_it_then_is_inactive() -> None:
    net, (_, _, c), (ga, gb, gc) = trio()
    removal = ga.remove_members([2], b"")
    commit_to_all(ga, removal, [gb])
    processed = gc.process_message(removal, b"", b"")
    assert processed.kind is ProcessedKind.COMMIT and not processed.still_member and not gc.is_active
    for call in (lambda: gc.create_message(b"x", b""), lambda: gc.self_update(b""),
                 lambda: gc.process_message(ga.create_message(b"y", b""), b"", b"")):  # fmt: skip
        with pytest.raises(NotAMember):
            call()
    # Its leaf goes to the next member added (the leftmost free leaf).
    dave = MemoryEngine.new(net, b"dave")
    _, welcome = ga.add_members([dave.key_package()], b"")
    ga.merge_pending_commit()
    assert dave.join_group(welcome).own_leaf_index == 2
    with pytest.raises(InvalidInput):
        ga.remove_members([7], b"")
    with pytest.raises(MlsError):
        ga.remove_members([ga.own_leaf_index], b"")
    assert c.load_group(GID) is not None and not c.load_group(GID).is_active  # type: ignore[union-attr]


def test_application_messages_decrypt_once_in_the_kept_epochs() -> None:
    _, _, (ga, gb, gc) = trio()
    old = [gc.create_message(b"epoch 1", b"")]
    for i in range(MAX_PAST_EPOCHS + 1):
        commit_to_all(ga, ga.self_update(b""), [gb, gc])
        old.append(gc.create_message(f"epoch {2 + i}".encode(), b""))
    assert gb.epoch == 1 + MAX_PAST_EPOCHS + 1
    with pytest.raises(MlsError):  # four epochs back: its secrets are gone
        gb.process_message(old[0], b"", b"")
    for message in old[1:]:
        processed = gb.process_message(message, b"", b"")
        assert processed.kind is ProcessedKind.APPLICATION and processed.sender_leaf == 2
        assert processed.epoch == gb.epoch
        with pytest.raises(MlsError):  # a generation decrypts once
            gb.process_message(message, b"", b"")
    assert gc.process_message(old[-1], b"", b"").kind is ProcessedKind.OWN_MESSAGE
    ga.self_update(b"")
    ga.merge_pending_commit()
    with pytest.raises(WrongEpoch):
        gb.process_message(ga.create_message(b"from the future", b""), b"", b"")


def test_header_and_hash_checks_undo_the_step() -> None:
    _, _, (ga, gb, _) = trio()
    message = ga.create_message(b"text", b"header")
    with pytest.raises(HeaderMismatch):
        gb.process_message(message, b"another header", b"")
    with pytest.raises(ContentHashMismatch):
        gb.process_message(message, b"header", sha(b"other text"))
    assert gb.process_message(message, b"header", sha(b"text")).plaintext == b"text"
    commit = ga.self_update(b"commit header")
    with pytest.raises(HeaderMismatch):
        gb.process_message(commit, b"forged", b"")
    assert gb.epoch == 1
    assert gb.process_message(commit, b"commit header", b"").epoch == 2


@settings(max_examples=60, deadline=None)
@given(which=st.integers(0, 1), position=st.integers(0, 1 << 16), bit=st.integers(0, 7))
def test_altered_bytes_never_pass(which: int, position: int, bit: int) -> None:
    _, _, (ga, gb, _) = trio()
    genuine = [ga.create_message(b"some text", b"aad"), ga.self_update(b"aad")][which]
    altered = bytearray(genuine)
    altered[position % len(altered)] ^= 1 << bit
    before = dict(gb._engine.entries())
    with pytest.raises(PingError):  # undecodable, unverifiable, or for another epoch or header
        gb.process_message(bytes(altered), b"aad", b"")
    assert gb._engine.entries() == before
    assert gb.process_message(genuine, b"aad", b"").kind in (ProcessedKind.APPLICATION, ProcessedKind.COMMIT)


def test_savepoints_undo_everything_and_groups_are_reloaded() -> None:
    _, (_, b, _), (ga, gb, _) = trio()
    message = ga.create_message(b"once", b"")
    before = b.entries()
    with pytest.raises(RuntimeError), b.savepoint():
        with b.savepoint():
            gb.process_message(message, b"", b"")
        gb.self_update(b"")
        raise RuntimeError("undo")
    assert b.entries() == before
    assert gb.has_pending_commit  # the object kept its state, as the wasm object does...
    reloaded = b.load_group(GID)
    assert reloaded is not None and not reloaded.has_pending_commit  # ...until reloaded
    assert reloaded.process_message(message, b"", b"").plaintext == b"once"


def test_the_working_set_is_all_there_is() -> None:
    net, (_, b, _), (ga, gb, _) = trio()
    gb.process_message(ga.create_message(b"first", b""), b"", b"")
    second = ga.create_message(b"second", b"")
    restarted = MemoryEngine.restore(net, b.entries().items())
    group = restarted.load_group(GID)
    assert group is not None and group.epoch == 1 and group.own_leaf_index == 1
    assert group.process_message(second, b"", b"").plaintext == b"second"
    entries = restarted.group_entries(GID)
    assert entries and all(key.startswith(restarted.group_prefix(GID)) for key, _ in entries)
    restarted.drop_group(GID)
    assert restarted.load_group(GID) is None
    restarted.import_entries(entries)
    assert restarted.load_group(GID) is not None
    with pytest.raises(PingError):  # the restored copy already consumed that generation
        restarted.load_group(GID).process_message(second, b"", b"")  # type: ignore[union-attr]
