"""Conversation semantics with real OpenMLS: create, join, send, membership, commits, held and late messages."""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
def test_five_devices_of_three_users_with_adds_and_removes(selenium):
    import pytest

    from ping_web.core.envelope import MessageKind
    from ping_web.errors import NotAMember, PingError
    from ping_web.testing import LocalDevice, deliver

    t = 1_000
    devices = {name: LocalDevice(user) for name, user in [
        ("alice1", b"alice"), ("alice2", b"alice"), ("bob1", b"bob"), ("bob2", b"bob"), ("carol1", b"carol"),
    ]}  # fmt: skip
    convs = {"alice1": devices["alice1"].create(t, name="team")}
    assert convs["alice1"].epoch() == 0 and convs["alice1"].leaf_index_of(devices["alice1"].device_id) == 0

    def members():
        return [(devices[n], convs[n]) for n in convs]

    def add(adder, names):
        entries = [(devices[n].device_id, devices[n].key_package()) for n in names]
        outcome = devices[adder].run(lambda: convs[adder].add_members(entries, t))
        assert outcome.commit.kind is MessageKind.COMMIT and outcome.welcome.kind is MessageKind.WELCOME
        assert outcome.welcome.epoch == outcome.commit.epoch + 1  # commit: source epoch; welcome: new epoch
        others = [(d, c) for d, c in members() if c is not convs[adder]]
        deliver(outcome.commit, others, t)
        devices[adder].run(convs[adder].confirm_commit)
        for n in names:
            convs[n] = devices[n].join(outcome.welcome, t)
            # The joiner's cursor starts at the join epoch: the commit that added it is skipped.
            assert convs[n].process(outcome.commit, t) is None
        return outcome

    add("alice1", ["bob1"])
    add("bob1", ["alice2", "carol1"])
    add("alice2", ["bob2"])
    epochs = {c.epoch() for c in convs.values()}
    assert epochs == {3}
    users = sorted(m.user_id.raw for m in convs["carol1"].members())
    assert users == [b"alice", b"alice", b"bob", b"bob", b"carol"]

    def broadcast(sender, text):
        env = devices[sender].run(lambda: convs[sender].send_application(text, t))
        others = [(d, c) for d, c in members() if c is not convs[sender]]
        got = deliver(env, others, t)
        return env, got

    for name in list(convs):
        text = f"hello from {name}".encode()
        _, got = broadcast(name, text)
        assert [g.plaintext for g in got] == [text] * 4
        assert {g.sender_user.raw for g in got} == {devices[name].user}

    # bob2 removes carol; carol reads the commit, learns she is out, and cannot read on.
    # bob1 added carol; bob2 learned her leaf from the messages she sent.
    carol_leaf = convs["bob1"].leaf_index_of(devices["carol1"].device_id)
    assert convs["bob2"].leaf_index_of(devices["carol1"].device_id) == carol_leaf
    commit = devices["bob1"].run(lambda: convs["bob1"].remove_members([carol_leaf], t))
    deliver(commit, [(d, c) for d, c in members() if c is not convs["bob1"]], t)
    devices["bob1"].run(convs["bob1"].confirm_commit)
    carol = convs.pop("carol1")
    assert carol.state.removed
    with pytest.raises(NotAMember):
        carol.send_application(b"let me in", t)
    env, got = broadcast("alice1", b"carol is gone")
    assert [g.plaintext for g in got] == [b"carol is gone"] * 3
    with pytest.raises(PingError):
        carol.process(env, t)
    assert {c.meta.member_count for c in convs.values()} == {4}
    assert {c.epoch() for c in convs.values()} == {4}
    assert convs["alice2"].leaf_index_of(devices["carol1"].device_id) is None


@run_in_pyodide(packages=["ping_web"])
def test_replays_and_duplicates_are_ignored(selenium):
    from ping_web.testing import LocalDevice, over_the_wire

    a, b = LocalDevice(b"alice"), LocalDevice(b"bob")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package())], 2))
    a.run(ca.confirm_commit)
    cb = b.join(outcome.welcome, 3)

    envs = [a.run(lambda i=i: ca.send_application(f"m{i}".encode(), 10 + i)) for i in range(5)]
    assert [e.seq for e in envs] == [2, 3, 4, 5, 6]  # seq 1 was the commit
    # Out of order, with duplicates and replays mixed in: each message once.
    order = [envs[2], envs[0], envs[2], envs[4], envs[1], envs[0], envs[3], envs[4], envs[3]]
    got = [b.run(lambda e=e: cb.process(over_the_wire(e), 20)) for e in order]
    texts = [g.plaintext for g in got if g is not None]
    assert sorted(texts) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert got.count(None) == 4
    # The commit that added bob, replayed to him and to alice, changes nothing.
    assert b.run(lambda: cb.process(outcome.commit, 21)) is None
    assert a.run(lambda: ca.process(outcome.commit, 21)) is None
    assert ca.epoch() == cb.epoch() == 1


@run_in_pyodide(packages=["ping_web"])
def test_tampered_content_hash_is_rejected_and_changes_nothing(selenium):
    import dataclasses

    import pytest

    from ping_web.core.envelope import MessageEnvelope
    from ping_web.errors import ContentHashMismatch, DecodeError
    from ping_web.testing import LocalDevice

    a, b = LocalDevice(b"alice"), LocalDevice(b"bob")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package())], 2))
    a.run(ca.confirm_commit)
    cb = b.join(outcome.welcome, 3)

    env = a.run(lambda: ca.send_application(b"the real text", 4))
    forged = dataclasses.replace(env, content_hash=bytes(32))
    stored_before = dict(b.stored)
    cursor_before = cb.cursor.copy()
    with pytest.raises(ContentHashMismatch):
        b.run(lambda: cb.process(forged, 5))
    assert b.stored == stored_before and cb.cursor == cursor_before
    # The ratchet step was undone: the genuine envelope still decrypts.
    assert b.run(lambda: cb.process(env, 6)).plaintext == b"the real text"

    # A v=1 (commit) envelope with a wrong hash fails the wire check before any MLS work.
    commit = a.run(lambda: ca.self_update(7))
    wire = bytearray(commit.encode())
    wire[-1] ^= 1  # the hash is the last field of the map
    with pytest.raises(DecodeError):
        MessageEnvelope.decode(bytes(wire))


@run_in_pyodide(packages=["ping_web"])
def test_late_application_message_of_the_previous_epoch_is_delivered(selenium):
    from ping_web.testing import LocalDevice, deliver

    a, b, c = LocalDevice(b"alice"), LocalDevice(b"bob"), LocalDevice(b"carol")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package()), (c.device_id, c.key_package())], 2))
    a.run(ca.confirm_commit)
    cb, cc = b.join(outcome.welcome, 3), c.join(outcome.welcome, 3)

    late = c.run(lambda: cc.send_application(b"sent in epoch 1", 4))
    commit = b.run(lambda: cb.self_update(5))
    b.run(cb.confirm_commit)
    deliver(commit, [(a, ca), (c, cc)], 6)
    assert ca.epoch() == cb.epoch() == cc.epoch() == 2
    # carol's message reaches alice and bob only now, after the epoch moved on.
    got = deliver(late, [(a, ca), (b, cb)], 7)
    assert [g.plaintext for g in got] == [b"sent in epoch 1"] * 2
    assert got[0].epoch == 1


@run_in_pyodide(packages=["ping_web"])
def test_future_epoch_messages_are_held_then_delivered(selenium):
    from ping_web.testing import LocalDevice, over_the_wire

    a, b, c = LocalDevice(b"alice"), LocalDevice(b"bob"), LocalDevice(b"carol")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package()), (c.device_id, c.key_package())], 2))
    a.run(ca.confirm_commit)
    cb, cc = b.join(outcome.welcome, 3), c.join(outcome.welcome, 3)

    commit = b.run(lambda: cb.self_update(4))
    b.run(cb.confirm_commit)
    a.run(lambda: ca.process(over_the_wire(commit), 5))
    early = [a.run(lambda i=i: ca.send_application(f"epoch 2 #{i}".encode(), 6 + i)) for i in range(3)]
    # carol gets alice's epoch-2 messages before bob's commit: held, not failed, not lost.
    for env in early:
        assert c.run(lambda env=env: cc.process(over_the_wire(env), 10)) is None
    assert len(cc.held) == 3 and cc.epoch() == 1

    # A restart while they wait: each held envelope is a persisted record of its own.
    from ping_web.core.conversation import Conversation, ConversationRecords
    from ping_web.core.state import ConversationState, decode_held

    records = cc.records()
    added, released = cc.held_changes()
    assert len(added) == 3 and released == []
    assert cc.held_changes() == ([], [])  # reported once: a later batch writes none of them again
    c2 = c.restarted()
    stored = ConversationRecords(
        cc.meta,
        cc.cursor.copy(),
        cc.device_leaves,
        ConversationState.decode(records["state"]),
        [decode_held(e.encode()) for e in added],
    )
    cc2 = Conversation.load(c2.engine, c2.device_id, stored)  # fmt: skip
    assert len(cc2.held) == 3
    assert c2.run(lambda: cc2.process(over_the_wire(commit), 11)) is None
    released = cc2.take_released()
    assert [m.plaintext for m in released] == [b"epoch 2 #0", b"epoch 2 #1", b"epoch 2 #2"]
    assert cc2.held == [] and cc2.epoch() == 2 and cc2.take_rejected() == []
    now_added, now_released = cc2.held_changes()  # the batch deletes exactly the three records
    assert now_added == [] and sorted(e.seq for e in now_released) == sorted(e.seq for e in added)


@run_in_pyodide(packages=["ping_web"])
def test_concurrent_commits_in_one_epoch_do_not_fork(selenium):
    import pytest

    from ping_web.errors import PendingCommit
    from ping_web.testing import LocalDevice, over_the_wire

    a, b, c = LocalDevice(b"alice"), LocalDevice(b"bob"), LocalDevice(b"carol")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package()), (c.device_id, c.key_package())], 2))
    a.run(ca.confirm_commit)
    cb, cc = b.join(outcome.welcome, 3), c.join(outcome.welcome, 3)

    # alice and bob both commit in epoch 1; the ordered log takes bob's first.
    mine = a.run(lambda: ca.self_update(4))
    theirs = b.run(lambda: cb.self_update(4))
    with pytest.raises(PendingCommit):
        ca.self_update(5)
    log = [theirs, mine]
    for device, conv in [(a, ca), (b, cb), (c, cc)]:
        for env in log:
            device.run(lambda env=env, conv=conv: conv.process(over_the_wire(env), 6))
    # bob saw his own commit echoed: confirmed. alice saw bob's first: hers was dropped.
    assert not ca.has_pending_commit and not cb.has_pending_commit
    assert ca.epoch() == cb.epoch() == cc.epoch() == 2
    secrets = {conv.export_secret("ping/test", b"", 32) for conv in (ca, cb, cc)}
    assert len(secrets) == 1
    env = a.run(lambda: ca.send_application(b"no fork", 7))
    assert b.run(lambda: cb.process(over_the_wire(env), 8)).plaintext == b"no fork"
    assert c.run(lambda: cc.process(over_the_wire(env), 8)).plaintext == b"no fork"


@run_in_pyodide(packages=["ping_web"])
def test_discarded_commit_keeps_its_seq_and_changes_no_epoch(selenium):
    import pytest

    from ping_web.errors import NoPendingCommit
    from ping_web.testing import LocalDevice, over_the_wire

    a, b = LocalDevice(b"alice"), LocalDevice(b"bob")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package())], 2))
    a.run(ca.confirm_commit)
    cb = b.join(outcome.welcome, 3)
    with pytest.raises(NoPendingCommit):
        ca.confirm_commit()
    rejected = a.run(lambda: ca.self_update(4))
    a.run(ca.discard_commit)
    assert ca.epoch() == 1 and not ca.has_pending_commit
    env = a.run(lambda: ca.send_application(b"after discard", 5))
    assert env.seq == rejected.seq + 1
    assert b.run(lambda: cb.process(over_the_wire(env), 6)).plaintext == b"after discard"


@run_in_pyodide(packages=["ping_web"])
def test_snapshot_restore_decrypts_on_and_self_updates_before_sending(selenium):
    import pytest

    from ping_web.core.conversation import Conversation, ConversationRecords
    from ping_web.errors import StateConflict
    from ping_web.testing import LocalDevice, deliver, over_the_wire

    a, b = LocalDevice(b"alice"), LocalDevice(b"bob")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package())], 2))
    a.run(ca.confirm_commit)
    cb = b.join(outcome.welcome, 3)
    deliver(b.run(lambda: cb.send_application(b"before backup", 4)), [(a, ca)], 4)

    # Bob's backup: the conversation snapshot plus his records and signing key.
    snapshot = cb.export_state_snapshot(5)
    records = {"meta": cb.meta, "cursor": cb.cursor.copy(), "leaves": cb.device_leaves, "state": cb.state.copy()}
    identity_entries = [(k, v) for k, v in b.stored.items() if k.startswith(b"\x02SignatureKeyPair")]

    # Bob goes on sending after the backup; then his device is lost.
    for i in range(3):
        deliver(b.run(lambda i=i: cb.send_application(f"after backup {i}".encode(), 6)), [(a, ca)], 6)

    fresh = LocalDevice.__new__(LocalDevice)
    from ping_web.mls.openmls import MlsRuntime

    fresh.user, fresh.runtime = b"bob", MlsRuntime.load()
    fresh.provider = fresh.runtime.provider()
    fresh.provider.restore(identity_entries)
    fresh.identity = fresh.provider.load_identity(b"bob", b.identity.public_key)
    fresh.device_id, fresh.stored = b.device_id, {}
    backed_up = ConversationRecords(records["meta"], records["cursor"], records["leaves"], records["state"])
    restored = fresh.run(lambda: Conversation.restore_snapshot(fresh.engine, fresh.device_id, snapshot, backed_up))
    assert restored.epoch() == cb.epoch()

    # It decrypts what follows...
    env = a.run(lambda: ca.send_application(b"welcome back", 7))
    assert fresh.run(lambda: restored.process(over_the_wire(env), 8)).plaintext == b"welcome back"
    # ...but will not send in the restored epoch: that could reuse a ratchet generation.
    with pytest.raises(StateConflict):
        restored.send_application(b"too early", 9)
    commit = fresh.run(lambda: restored.self_update(9))
    fresh.run(restored.confirm_commit)
    deliver(commit, [(a, ca)], 10)
    assert ca.epoch() == restored.epoch() == 2
    env = fresh.run(lambda: restored.send_application(b"safe again", 11))
    assert a.run(lambda: ca.process(over_the_wire(env), 12)).plaintext == b"safe again"
    # The snapshot has a hard cap and a version.
    from ping_web.core.records import GROUP_SNAPSHOT_HARD_CAP, GroupStateSnapshot

    decoded = GroupStateSnapshot.decode(snapshot)
    assert decoded.group_id == cb.id and 0 < len(snapshot) < GROUP_SNAPSHOT_HARD_CAP


@run_in_pyodide(packages=["ping_web"])
def test_seq_is_restored_from_the_cursor_after_a_restart(selenium):
    from ping_web.core.conversation import Conversation, ConversationRecords
    from ping_web.core.state import ConversationState
    from ping_web.testing import LocalDevice, over_the_wire

    a, b = LocalDevice(b"alice"), LocalDevice(b"bob")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package())], 2))
    a.run(ca.confirm_commit)
    cb = b.join(outcome.welcome, 3)
    sent = [a.run(lambda: ca.send_application(b"x", 4)) for _ in range(3)]
    state = ConversationState.decode(ca.records()["state"])
    state.seq = 0  # even without the stored counter, the cursor knows our own seqs
    a2 = a.restarted()
    ca2 = Conversation.load(a2.engine, a2.device_id,
                            ConversationRecords(ca.meta, ca.cursor.copy(), ca.device_leaves, state))  # fmt: skip
    env = a2.run(lambda: ca2.send_application(b"after restart", 5))
    assert env.seq == sent[-1].seq + 1
    for e in [*sent, env]:
        assert b.run(lambda e=e: cb.process(over_the_wire(e), 6)) is not None


@run_in_pyodide(packages=["ping_web"])
def test_export_secret_bounds_and_labels(selenium):
    import pytest

    from ping_web.errors import InvalidInput
    from ping_web.testing import LocalDevice

    a = LocalDevice(b"alice")
    ca = a.create(1)
    assert len(ca.export_secret("ping/x", b"", 1)) == 1
    assert len(ca.export_secret("ping/x", b"", 1024)) == 1024
    for bad in [0, 1025, -5, 3.0, True]:
        with pytest.raises(InvalidInput):
            ca.export_secret("ping/x", b"", bad)
    with pytest.raises(InvalidInput):
        ca.export_secret("other/x", b"", 16)


@run_in_pyodide(packages=["ping_web"])
def test_a_thousand_mutated_envelopes_never_break_the_group(selenium):
    import dataclasses
    import random

    from ping_web.core.envelope import MessageEnvelope
    from ping_web.errors import PingError
    from ping_web.testing import LocalDevice, over_the_wire

    rng = random.Random(2026)
    a, b, c = LocalDevice(b"alice"), LocalDevice(b"bob"), LocalDevice(b"carol")
    ca = a.create(1)
    outcome = a.run(lambda: ca.add_members([(b.device_id, b.key_package()), (c.device_id, c.key_package())], 2))
    a.run(ca.confirm_commit)
    cb, cc = b.join(outcome.welcome, 3), c.join(outcome.welcome, 3)
    originals = [a.run(lambda i=i: ca.send_application(f"msg {i}".encode(), 10 + i)) for i in range(5)]
    originals.append(c.run(lambda: cc.send_application(b"from carol", 20)))
    originals.append(c.run(lambda: cc.self_update(21)))  # a commit bob has not seen
    c.run(cc.discard_commit)

    def bob_state():
        """Everything bob keeps: MLS entries, conversation records, held envelopes."""
        return dict(b.stored), cb.records(), sorted((e.sender_device.raw, e.seq) for e in cb.held)

    rejected = held = 0
    for i in range(1000):
        base = rng.choice(originals)
        wire = bytearray(base.encode())
        mode = rng.randrange(5)
        if mode == 0:  # flip bits anywhere
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(wire))
                wire[pos] ^= 1 << rng.randrange(8)
        elif mode == 1:  # truncate
            del wire[rng.randrange(len(wire)) :]
        elif mode == 2:  # extend
            wire += rng.randbytes(rng.randint(1, 64))
        elif mode == 3:  # a decodable envelope with a mutated payload
            payload = bytearray(base.payload)
            payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
            env = dataclasses.replace(base, payload=bytes(payload))
            if env.v == 1:
                env = MessageEnvelope.handshake(env.kind, env.conversation_id, env.epoch, env.sender_device,
                                                env.seq, env.hlc, env.payload)  # fmt: skip
            wire = bytearray(env.encode())
        else:  # a replay with a shifted seq or epoch
            env = dataclasses.replace(base, seq=base.seq + rng.randint(1, 5), epoch=base.epoch + rng.randint(0, 1))
            wire = bytearray(env.encode())
        assert bytes(wire) != base.encode()
        before = bob_state()
        try:
            env = MessageEnvelope.decode(bytes(wire))
            result = b.run(lambda env=env, i=i: cb.process(env, 100 + i))
        except PingError:
            rejected += 1
            assert bob_state() == before, f"mutation {i} (mode {mode}) was refused but changed bob's state"
            continue
        # No mutated envelope is ever reported as a message.
        assert result is None, f"mutation {i} (mode {mode}) was accepted as {result!r}"
        # The only thing an unverifiable envelope may change: it waits for its epoch.
        stored, records, waiting = bob_state()
        assert (stored, records) == before[:2] and env.epoch > cb.epoch(), f"mutation {i} changed bob's state"
        assert (env.sender_device.raw, env.seq) in waiting
        held += 1
    assert rejected + held == 1000 and rejected > 500, (rejected, held)

    # Every genuine envelope still gets through: no mutation made bob drop one as a replay.
    got = [b.run(lambda e=e: cb.process(over_the_wire(e), 1500)) for e in originals[:-1]]
    assert [m.plaintext for m in got] == [*(f"msg {i}".encode() for i in range(5)), b"from carol"]

    # Bob's group still works both ways.
    env = a.run(lambda: ca.send_application(b"still working", 2000))
    assert b.run(lambda: cb.process(over_the_wire(env), 2001)).plaintext == b"still working"
    env = b.run(lambda: cb.send_application(b"me too", 2002))
    assert a.run(lambda: ca.process(over_the_wire(env), 2003)).plaintext == b"me too"
