"""Conversation under an adversarial delivery service: a Hypothesis state machine.

Up to six devices (of three users) share one conversation, each a
:class:`~ping_web.core.conversation.Conversation` over its own
:class:`~memory_engine.MemoryEngine`. An ordered log plays the relay: it takes every
application message of a member and, per epoch, the first commit made in that epoch. Each
device persists after every operation exactly what the client persists (the engine's working
set, ``records(changed_only=True)`` and ``held_changes()``) and can restart from that alone.

The delivery service is the adversary: it hands each device log entries in any order, drops
and redelivers them, replays old ones, delivers commits before or after the messages of
their epoch, and forges envelopes from genuine ones. Checked after every step: no fork, a
cursor and meta that follow the group, nothing held that could be applied, every refused
envelope changed nothing, no message twice, no seq reused. At the end every envelope still
owed is delivered (newest first, then in log order) and every device must have received
every message of the epochs it was a member in, unless it arrived after that epoch's secrets
were gone or after the device had applied its own removal.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from memory_engine import MAX_PAST_EPOCHS, MemoryEngine, MemoryNetwork, open_message

from ping_web.core.conversation import MAX_HOLD_AHEAD, Conversation, ConversationRecords
from ping_web.core.cursor import WINDOW, SyncCursor
from ping_web.core.envelope import MessageEnvelope, MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import ConversationMeta, decode_device_leaves, encode_device_leaves
from ping_web.core.state import ConversationState, decode_held
from ping_web.errors import (
    NotAMember,
    PendingCommit,
    PingError,
    RejoinRequired,
    StateConflict,
    UnknownOwnEnvelope,
)

CONVERSATION = ConversationId(b"conversation-001")
USERS = (b"alice", b"bob", b"alice", b"carol", b"bob", b"carol")
MAX_MEMBERS = 5
FORK_LABEL = "ping/fork-check"
NEVER = 1 << 64


def device_id(index: int) -> DeviceId:
    return DeviceId(f"device-{index:09d}".encode())


def key_of(envelope: MessageEnvelope) -> tuple[bytes, int]:
    """(sender, seq): one message, and one held envelope record."""
    return envelope.sender_device.raw, envelope.seq


@dataclass
class Staged:
    """An own commit: in the outbox, then posted, then settled."""

    commit: MessageEnvelope
    welcome: MessageEnvelope | None = None
    added: tuple[Device, ...] = ()
    removed: Device | None = None
    posted: bool = False
    accepted: bool = False
    index: int = -1
    """Its log position once accepted."""


@dataclass
class Stored:
    """What a device has written durably: the MLS working set and the conversation records."""

    mls: dict[bytes, bytes] = field(default_factory=dict)
    records: dict[str, bytes] = field(default_factory=dict)
    held: dict[tuple[bytes, int], bytes] = field(default_factory=dict)


@dataclass
class Book:
    """The test's bookkeeping of one device, saved with each persist (a crash rolls it back)."""

    done: dict[int, str] = field(default_factory=dict)
    """Log index -> "ok" (applied, held or ignored), "before" (older than the join),
    "expired" (its epoch's secrets were gone), "removed" (arrived after the removal) or
    "foreign" (sent by this device's lost copy after the backup it was restored from)."""
    got: Counter[tuple[bytes, int]] = field(default_factory=Counter)
    """(sender, seq) -> how often the message was delivered to this device."""
    expired: set[tuple[bytes, int]] = field(default_factory=set)
    lost: set[tuple[bytes, int]] = field(default_factory=set)
    """Messages that arrived after this device applied its removal."""
    seqs: set[int] = field(default_factory=set)
    """Every seq this copy of the device used (across restarts; a copy restored from a backup
    starts from the backup's: two copies restored from one backup may reuse each other's
    seqs, but only in commits the log refuses, as ``Device.logged`` checks)."""
    staged: Staged | None = None
    stuck_at: int | None = None
    """A copy restored from a backup stops at the epoch of a commit its lost copy made after
    the backup (that commit is not its doing): it can read no further and needs a rejoin."""

    def copy(self) -> Book:
        return Book(dict(self.done), Counter(self.got), set(self.expired), set(self.lost), set(self.seqs),
                    self.staged, self.stuck_at)  # fmt: skip


@dataclass
class Backup:
    """A device's backup of the conversation: MLS snapshot, records, identity."""

    snapshot: bytes
    records: ConversationRecords
    identity: list[tuple[bytes, bytes]]
    book: Book


@dataclass(eq=False)
class Device:
    index: int
    user: bytes
    engine: MemoryEngine
    device_id: DeviceId
    conv: Conversation | None = None
    stored: Stored = field(default_factory=Stored)
    book: Book = field(default_factory=Book)
    saved_book: Book = field(default_factory=Book)
    start: int = 0
    """First log index owed to this device (after the commit that added it)."""
    join_epoch: int = 0
    welcome: MessageEnvelope | None = None
    welcome_index: int = -1
    reserved: bool = False
    dropped: set[int] = field(default_factory=set)
    backup: Backup | None = None
    restored: bool = False
    logged: set[int] = field(default_factory=set)
    """The seqs of this device's envelopes in the log (of all its copies)."""

    @property
    def name(self) -> str:
        return f"d{self.index}"

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Sent:
    """An application message the log accepted."""

    sender: Device
    plaintext: bytes
    epoch: int


@dataclass
class Log:
    """The relay's ordered log of the conversation."""

    entries: list[MessageEnvelope] = field(default_factory=list)
    epoch: int = 0
    canonical: dict[int, bytes] = field(default_factory=dict)
    """Epoch -> the network state the log's commits made."""
    members: set[int] = field(default_factory=set)
    removed_at: dict[int, int] = field(default_factory=dict)


FORGERIES = ("seq", "hlc", "sender", "epoch", "payload", "hash", "kind", "own", "pending", "echo")
PICK = st.integers(0, 1 << 16)
THEN = st.sampled_from(["settle", "post", "stage", "settle"])


class ConversationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = MemoryNetwork()
        self.clock = 1_700_000_000_000
        self.log = Log()
        self.sent: dict[tuple[bytes, int], Sent] = {}
        self.messages = 0
        self.persisting = True
        self.clean = True
        self.devices = [Device(i, user, MemoryEngine.new(self.net, user), device_id(i)) for i, user in enumerate(USERS)]
        for d in self.devices:
            d.stored.mls = d.engine.entries()

    # -- plumbing -------------------------------------------------------------------------------

    def now(self) -> int:
        self.clock += 1000
        return self.clock

    def step(self) -> None:
        self.clean = False

    def joined(self) -> list[Device]:
        return [d for d in self.devices if d.conv is not None]

    def pick(self, pick: int, pool: list[Device]) -> Device | None:
        return pool[pick % len(pool)] if pool else None

    def senders(self) -> list[Device]:
        """Devices that may commit: not removed as far as they know, no rejoin needed."""
        return [d for d in self.joined() if not conv(d).state.removed and not conv(d).state.rejoin_required]

    def fingerprint(self, d: Device) -> tuple[Any, ...]:
        """Everything a device keeps, compared without touching records()' change tracking."""
        c = conv(d)
        return (
            c.meta.encode(),
            c.cursor.encode(),
            c.state.encode(),
            encode_device_leaves(c.device_leaves),
            sorted(e.encode() for e in c.held),
            d.engine.entries(),
            c.epoch(),
            c.has_pending_commit,
        )

    def persist(self, d: Device) -> None:
        """Write what the client writes after an operation (even a failed one)."""
        if not self.persisting:
            return
        if d.conv is not None:
            d.stored.records.update(d.conv.records(changed_only=True))
            added, removed = d.conv.held_changes()
            for envelope in removed:
                assert key_of(envelope) in d.stored.held, f"{d}: held_changes removes {envelope} it never added"
                del d.stored.held[key_of(envelope)]
            for envelope in added:
                d.stored.held[key_of(envelope)] = envelope.encode()
        d.stored.mls = d.engine.entries()
        d.saved_book = d.book.copy()

    def reload(self, d: Device) -> None:
        """Start the device afresh from exactly what it stored."""
        d.engine = MemoryEngine.restore(self.net, d.stored.mls.items())
        records = d.stored.records
        d.conv = Conversation.load(
            d.engine,
            d.device_id,
            ConversationRecords(
                meta=ConversationMeta.decode(records["meta"]),
                cursor=SyncCursor.decode(records["cursor"]),
                device_leaves=decode_device_leaves(records["leaves"]),
                state=ConversationState.decode(records["state"]),
                held=[decode_held(value) for _, value in sorted(d.stored.held.items())],
            ),
        )
        assert d.conv is not None, f"{d}: the stored working set has no group"
        d.book = d.saved_book.copy()
        self.persist(d)

    def logged(self, d: Device, envelope: MessageEnvelope) -> None:
        assert envelope.seq not in d.logged, f"the log holds two envelopes of {d} with seq {envelope.seq}"
        d.logged.add(envelope.seq)

    def sent_seq(self, d: Device, envelope: MessageEnvelope) -> None:
        assert envelope.sender_device == d.device_id
        assert envelope.seq not in d.book.seqs, f"{d} sent seq {envelope.seq} twice"
        d.book.seqs.add(envelope.seq)

    def state_id(self, d: Device) -> bytes:
        group = d.engine.load_group(CONVERSATION.raw)
        assert group is not None
        return group.state_id

    def canonical_export(self, epoch: int) -> bytes:
        return MemoryNetwork.export(self.net.states[self.log.canonical[epoch]].secret, FORK_LABEL, b"", 16)

    # -- receiving: every genuine delivery goes through here ----------------------------------------

    def record(self, d: Device, message: Any) -> None:
        key = (message.sender_device.raw, message.seq)
        info = self.sent.get(key)
        assert info is not None, f"{d} got a message the log never accepted: {message}"
        assert message.plaintext == info.plaintext and message.epoch == info.epoch
        assert info.sender is not d, f"{d} got its own message back"
        assert d.book.got[key] == 0, f"{d} got {info.plaintext!r} twice"
        assert d.join_epoch <= info.epoch < self.log.removed_at.get(d.index, NEVER), (
            f"{d} got {info.plaintext!r} of epoch {info.epoch}, outside its membership"
        )
        assert message.sender_user in (None, UserId(info.sender.user)), (
            f"{d} attributes {info.plaintext!r} from {info.sender} to {message.sender_user}"
        )
        d.book.got[key] += 1

    def collect(self, d: Device, first: Any) -> list[Any]:
        c = conv(d)
        messages = ([] if first is None else [first]) + c.take_released()
        for envelope, error in c.take_rejected():
            # Held genuine envelopes all apply, except those of the epochs after this device's removal.
            after = envelope.epoch >= self.log.removed_at.get(d.index, NEVER)
            assert c.state.removed and after and isinstance(error, NotAMember), (
                f"{d} refused held {envelope}: {error!r}"
            )
        return messages

    def deliver(self, d: Device, index: int) -> None:
        """Hand log entry ``index`` to ``d`` and check the outcome against what it owes."""
        c = conv(d)
        envelope = self.log.entries[index]
        previous = d.book.done.get(index)
        before = self.fingerprint(d)
        epoch, removed = c.epoch(), c.state.removed
        try:
            result = c.process(envelope, self.now())
        except PingError as exc:
            assert self.fingerprint(d) == before, f"{d}: refusing log entry {index} ({exc!r}) changed its state"
            # Only a removed device refuses an entry it took before: one it held, unapplied.
            assert removed or previous not in ("ok", "before"), f"{d} refused a replay of entry {index}: {exc!r}"
            key = key_of(envelope)
            if removed:
                d.book.done[index] = "removed"
                if envelope.kind is MessageKind.APPLICATION:
                    d.book.lost.add(key)
            elif isinstance(exc, UnknownOwnEnvelope) and d.restored and envelope.sender_device == d.device_id:
                d.book.done[index] = "foreign"  # sent by a lost copy after the backup this one came from
                self.stuck(d, envelope)
            elif envelope.kind is MessageKind.APPLICATION and epoch - envelope.epoch > MAX_PAST_EPOCHS:
                d.book.done[index] = "expired"
                d.book.expired.add(key)
            elif envelope.epoch > epoch + MAX_HOLD_AHEAD:
                pass  # too far ahead to hold: owed again later
            else:
                raise AssertionError(f"{d} (epoch {epoch}) refused genuine log entry {index} {envelope}") from exc
            self.persist(d)
            return
        messages = self.collect(d, result)
        if d.restored and envelope.sender_device == d.device_id:
            self.stuck(d, envelope)  # ignored: a seq this copy used in a commit the log refused
        if previous is None and envelope.kind is MessageKind.APPLICATION and not messages:
            # A new message from another member, neither delivered nor held, was dropped as seen.
            dropped = envelope.sender_device != d.device_id and envelope.epoch >= c.cursor.min_epoch
            if dropped and key_of(envelope) not in {key_of(e) for e in c.held}:
                # Only ever beyond the window of its sender's incarnation (seq >> 32).
                window = c.cursor._seen.get((envelope.sender_device.raw, envelope.seq >> 32))
                assert window is not None and window[0] - envelope.seq >= WINDOW, (
                    f"{d} dropped genuine log entry {index}"
                )
        if previous is not None:
            assert not messages and self.fingerprint(d) == before, f"{d}: a replay of entry {index} changed state"
            return
        for message in messages:
            self.record(d, message)
        d.book.done[index] = "ok"
        self.persist(d)

    def stuck(self, d: Device, own: MessageEnvelope) -> None:
        """A restored copy did not apply a commit of a lost copy of its device: its epoch
        ends there (if it has not passed it: that would have been its own commit)."""
        if own.kind is MessageKind.COMMIT and conv(d).epoch() <= own.epoch:
            d.book.stuck_at = min(own.epoch, NEVER if d.book.stuck_at is None else d.book.stuck_at)

    def undelivered(self, d: Device, *, dropped: bool = False) -> list[int]:
        return [
            i for i in range(d.start, len(self.log.entries)) if i not in d.book.done and (dropped or i not in d.dropped)
        ]

    # -- sending and committing -------------------------------------------------------------------

    def send(self, d: Device) -> MessageEnvelope:
        self.messages += 1
        plaintext = f"{d.name}:{self.messages}".encode()
        envelope = conv(d).send_application(plaintext, self.now())
        self.sent_seq(d, envelope)
        if d.index in self.log.members:  # the relay refuses posts of removed devices
            self.logged(d, envelope)
            key = key_of(envelope)
            self.sent[key] = Sent(d, plaintext, envelope.epoch)
            self.log.entries.append(envelope)
        self.persist(d)
        return envelope

    def stage_add(self, adder: Device, news: list[Device]) -> None:
        entries = []
        for new in news:
            entries.append((new.device_id, new.engine.key_package()))
            new.reserved = True
            self.persist(new)
        outcome = conv(adder).add_members(entries, self.now())
        self.sent_seq(adder, outcome.commit)
        adder.book.staged = Staged(outcome.commit, outcome.welcome, tuple(news))
        self.persist(adder)

    def stage_remove(self, remover: Device, target: Device) -> bool:
        leaves = [m.leaf_index for m in conv(remover).members() if m.signature_key == target.engine.signature_key]
        if not leaves:
            return False
        commit = conv(remover).remove_members(leaves, self.now())
        self.sent_seq(remover, commit)
        remover.book.staged = Staged(commit, removed=target)
        self.persist(remover)
        return True

    def stage_update(self, d: Device) -> None:
        commit = conv(d).self_update(self.now())
        self.sent_seq(d, commit)
        d.book.staged = Staged(commit)
        self.persist(d)

    def post(self, d: Device) -> None:
        """The relay decides on the staged commit: the first commit of the log's epoch wins."""
        staged = d.book.staged
        assert staged is not None and not staged.posted
        staged.posted = True
        log = self.log
        staged.accepted = staged.commit.epoch == log.epoch and d.index in log.members
        if not staged.accepted:
            for new in staged.added:
                new.reserved = False
            return
        staged.index = len(log.entries)
        self.logged(d, staged.commit)
        log.entries.append(staged.commit)
        log.epoch += 1
        log.canonical[log.epoch] = open_message(staged.commit.payload).body["s"]
        for new in staged.added:
            new.welcome, new.welcome_index = staged.welcome, staged.index
            log.members.add(new.index)
        if staged.removed is not None:
            log.members.discard(staged.removed.index)
            log.removed_at[staged.removed.index] = log.epoch

    def settle(self, d: Device, *, via_echo: bool) -> None:
        """The device learns the relay's verdict: confirm (or see the echo), or discard."""
        staged = d.book.staged
        assert staged is not None and staged.posted
        c = conv(d)
        if staged.accepted:
            if c.has_pending_commit and via_echo:
                self.deliver(d, staged.index)
            elif c.has_pending_commit:
                c.confirm_commit()
                for message in self.collect(d, None):
                    self.record(d, message)
                d.book.done[staged.index] = "ok"
            assert not c.has_pending_commit and c.epoch() > staged.commit.epoch
        elif c.has_pending_commit:
            c.discard_commit()
        d.book.staged = None
        self.persist(d)

    def join(self, d: Device) -> None:
        assert d.welcome is not None and d.conv is None
        d.conv = Conversation.join(d.engine, d.device_id, d.welcome, self.now())
        d.join_epoch, d.start = d.welcome.epoch, d.welcome_index + 1
        assert d.conv.epoch() == d.join_epoch
        for index in range(d.start):
            d.book.done[index] = "before"
        self.persist(d)

    # -- setup ------------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        creator = self.devices[0]
        creator.conv = Conversation.create(
            creator.engine, creator.device_id, self.now(), name="machine", conversation_id=CONVERSATION
        )
        self.log.members.add(0)
        self.log.canonical[0] = self.state_id(creator)
        self.persist(creator)
        self.stage_add(creator, self.devices[1:3])
        self.post(creator)
        self.settle(creator, via_echo=False)
        for d in self.devices[1:3]:
            self.join(d)

    # -- rules: the devices -----------------------------------------------------------------------

    def committer(self, pick: int, catch_up: bool) -> Device | None:
        """A device to commit: its own earlier commit is posted and settled first, and with
        ``catch_up`` it syncs the log first, as a client would."""
        d = self.pick(pick, self.senders())
        if d is None:
            return None
        staged = d.book.staged
        if staged is not None:
            if not staged.posted:
                self.post(d)
            self.settle(d, via_echo=False)
        if catch_up:
            for index in self.undelivered(d, dropped=True):
                self.deliver(d, index)
        return d if d in self.senders() else None

    def after_staging(self, d: Device, then: str) -> None:
        """Leave the commit in the outbox, post it, or post it and learn the verdict at once."""
        if then != "stage":
            self.post(d)
        if then == "settle":
            self.settle(d, via_echo=False)

    @rule(pick=PICK, again=st.booleans())
    def join_from_welcome(self, pick: int, again: bool) -> None:
        """A device added by an accepted commit joins (the relay hands out Welcomes only
        then); a second join from the same Welcome fails and changes nothing."""
        self.step()
        d = self.pick(pick, [d for d in self.devices if d.welcome is not None and d.conv is None])
        if d is None:
            return
        self.join(d)
        if again:
            before = d.engine.entries()
            with pytest.raises(PingError):
                Conversation.join(d.engine, d.device_id, d.welcome, self.now())  # type: ignore[arg-type]
            assert d.engine.entries() == before

    @rule(pick=PICK, count=st.integers(1, 3))
    def send_messages(self, pick: int, count: int) -> None:
        self.step()
        d = self.pick(pick, self.joined())
        if d is None:
            return
        state = conv(d).state
        refusal = (NotAMember if state.removed else RejoinRequired if state.rejoin_required
                   else StateConflict if state.needs_self_update else None)  # fmt: skip
        if refusal is not None:
            before = self.fingerprint(d)
            with pytest.raises(refusal):
                conv(d).send_application(b"refused", self.now())
            assert self.fingerprint(d) == before
            return
        for _ in range(count):
            self.send(d)

    @rule(pick=PICK, count=st.integers(1, 2), catch_up=st.booleans(), then=THEN)
    def add_devices(self, pick: int, count: int, catch_up: bool, then: str) -> None:
        self.step()
        fresh = [d for d in self.devices if d.conv is None and d.welcome is None and not d.reserved]
        room = MAX_MEMBERS - len(self.log.members)
        if not fresh or room <= 0:
            return
        adder = self.committer(pick, catch_up)
        if adder is not None:
            self.stage_add(adder, fresh[: min(count, room)])
            self.after_staging(adder, then)

    @rule(pick=PICK, victim_pick=PICK, catch_up=st.booleans(), then=THEN)
    def remove_device(self, pick: int, victim_pick: int, catch_up: bool, then: str) -> None:
        self.step()
        if len(self.log.members) < 3:
            return
        remover = self.committer(pick, catch_up)
        if remover is None:
            return
        victim = self.pick(victim_pick, [d for d in self.devices if d.index in self.log.members and d is not remover])
        if victim is not None and self.stage_remove(remover, victim):
            self.after_staging(remover, then)

    @rule(pick=PICK, catch_up=st.booleans(), then=THEN)
    def self_update(self, pick: int, catch_up: bool, then: str) -> None:
        self.step()
        d = self.committer(pick, catch_up)
        if d is not None:
            self.stage_update(d)
            self.after_staging(d, then)

    @rule(pick=PICK)
    def post_commit(self, pick: int) -> None:
        self.step()
        d = self.pick(pick, [d for d in self.joined() if d.book.staged is not None and not d.book.staged.posted])
        if d is not None:
            self.post(d)

    @rule(first=PICK, second=PICK, catch_up=st.booleans())
    def two_devices_commit_in_one_epoch(self, first: int, second: int, catch_up: bool) -> None:
        """Both commit before either hears of the other; the log takes the first posted."""
        self.step()
        a = self.committer(first, catch_up)
        b = self.committer(second, catch_up)
        if a is None or b is None or a is b or a.book.staged is not None:
            return
        self.stage_update(a)
        self.stage_update(b)
        self.post(a)
        self.post(b)

    @rule(pick=PICK, via_echo=st.booleans(), others_first=st.booleans())
    def learn_verdict(self, pick: int, via_echo: bool, others_first: bool) -> None:
        """The device learns its commit's fate; with ``others_first``, only after it got
        everything else the log has (what followed an accepted commit waits for it)."""
        self.step()
        d = self.pick(pick, [d for d in self.joined() if d.book.staged is not None and d.book.staged.posted])
        if d is None:
            return
        if others_first:
            own = d.book.staged.index if d.book.staged is not None else -1
            for index in self.undelivered(d):
                if index != own:
                    self.deliver(d, index)
        self.settle(d, via_echo=via_echo)

    @rule(pick=PICK, which=st.sampled_from(["update", "remove", "add"]))
    def commit_while_pending_is_refused(self, pick: int, which: str) -> None:
        self.step()
        d = self.pick(pick, [d for d in self.senders() if conv(d).has_pending_commit])
        if d is None:
            return
        c = conv(d)
        before = self.fingerprint(d)
        with pytest.raises(PendingCommit):
            if which == "update":
                c.self_update(self.now())
            elif which == "remove":
                c.remove_members(
                    [m.leaf_index for m in c.members() if m.leaf_index != c.own_leaf_index][:1], self.now()
                )
            else:
                stranger = MemoryEngine.new(self.net, b"mallory")
                c.add_members([(device_id(99), stranger.key_package())], self.now())
        assert self.fingerprint(d) == before

    @rule(pick=PICK)
    def restart(self, pick: int) -> None:
        self.step()
        d = self.pick(pick, self.joined())
        if d is None:
            return
        before = self.fingerprint(d)
        self.reload(d)
        assert self.fingerprint(d) == before, f"{d} came back from its stored state changed"

    @rule(pick=PICK)
    def take_backup(self, pick: int) -> None:
        self.step()
        d = self.pick(pick, self.senders())
        if d is None:
            return
        c = conv(d)
        records = ConversationRecords(c.meta, c.cursor.copy(), c.device_leaves, c.state.copy(), c.held)
        d.backup = Backup(c.export_state_snapshot(self.now()), records, d.engine.identity_entries(), d.book.copy())

    @rule(pick=PICK)
    def lose_and_restore(self, pick: int) -> None:
        """The device is lost and set up again from its last backup: it reads on, refuses
        what its lost copy sent after the backup, and sends only after a commit of its own."""
        self.step()
        d = self.pick(pick, [d for d in self.joined() if d.backup is not None])
        if d is None:
            return
        backup = d.backup
        assert backup is not None
        staged = d.book.staged
        if staged is not None and not staged.posted:  # the outbox went with the device
            for new in staged.added:
                new.reserved = False
        records = dataclasses.replace(
            backup.records, cursor=backup.records.cursor.copy(), state=backup.records.state.copy()
        )
        d.engine = MemoryEngine.restore(self.net, backup.identity)
        d.conv = Conversation.restore_snapshot(d.engine, d.device_id, backup.snapshot, records)
        assert d.conv.state.needs_self_update and not d.conv.has_pending_commit
        assert d.conv.epoch() == records.meta.epoch
        d.book = backup.book.copy()
        d.book.staged = None
        d.stored, d.dropped, d.restored = Stored(), set(), True
        self.persist(d)

    @rule(pick=PICK, op=st.sampled_from(["send", "update", "deliver", "settle"]), k=PICK)
    def crash_before_persisting(self, pick: int, op: str, k: int) -> None:
        """An operation whose batch never reached storage: as if it never happened (its
        envelope never left the outbox), and the device restarts from what it stored."""
        self.step()
        d = self.pick(pick, self.joined())
        if d is None:
            return
        self.persisting = False
        try:
            c = conv(d)
            if op == "send" and d in self.senders() and not c.state.needs_self_update:
                c.send_application(b"lost in the crash", self.now())
            elif op == "update" and d in self.senders() and d.book.staged is None:
                c.self_update(self.now())
            elif op == "deliver" and self.undelivered(d):
                for index in self.undelivered(d)[k % 4 :]:
                    self.deliver(d, index)
            elif op == "settle" and d.book.staged is not None and d.book.staged.posted:
                self.settle(d, via_echo=bool(k & 1))
        finally:
            self.persisting = True
        self.reload(d)

    # -- rules: the delivery service ------------------------------------------------------------------

    @rule(
        pick=PICK,
        how=st.sampled_from(["any", "log order", "newest first", "shuffled", "epoch", "drop", "redeliver"]),
        k=PICK,
        order=st.randoms(use_true_random=False),
    )
    def deliver_to(self, pick: int, how: str, k: int, order: Any) -> None:
        """Hand one device log entries: one at random, some in log order, all newest first,
        all shuffled with duplicates, the next commit with the messages of the epoch it
        opens (commit first or last), or drop one for now and later redeliver the dropped."""
        self.step()
        d = self.pick(pick, [d for d in self.joined() if self.undelivered(d, dropped=how == "redeliver")])
        if d is None:
            return
        pending = self.undelivered(d)
        if how == "redeliver":
            batch = sorted(i for i in d.dropped if i not in d.book.done)
            d.dropped.clear()
        elif not pending:
            return
        elif how == "any":
            batch = [pending[k % len(pending)]]
        elif how == "log order":
            batch = pending[: 1 + k % 6]
        elif how == "newest first":
            batch = pending[::-1]
        elif how == "shuffled":
            batch = pending + [order.choice(pending) for _ in range(k % 4)]
            order.shuffle(batch)
        elif how == "epoch":
            batch = self.an_epoch(pending, commit_first=bool(k & 1))
        else:
            d.dropped.add(pending[k % len(pending)])
            return
        for index in batch:
            self.deliver(d, index)

    def an_epoch(self, pending: list[int], *, commit_first: bool) -> list[int]:
        entries = self.log.entries
        commits = [i for i in pending if entries[i].kind is MessageKind.COMMIT]
        if not commits:
            return pending[:1]
        commit = commits[0]
        epoch = entries[commit].epoch + 1
        messages = [i for i in pending if entries[i].kind is MessageKind.APPLICATION and entries[i].epoch == epoch]
        return [commit, *messages] if commit_first else [*messages, commit]

    @rule(pick=PICK, k=PICK)
    def replay(self, pick: int, k: int) -> None:
        """Any log entry again: older than the device, already applied, or not yet seen."""
        self.step()
        d = self.pick(pick, self.joined())
        if d is not None:
            self.deliver(d, k % len(self.log.entries))

    @rule(pick=PICK, k=PICK, how=st.sampled_from(FORGERIES), shift=st.integers(1, 3))
    def forge(self, pick: int, k: int, how: str, shift: int) -> None:
        """A relay rewrites a genuine envelope: refused (or ignored), never delivered, and
        nothing changes; one naming the receiver as its sender is UnknownOwnEnvelope."""
        self.step()
        d = self.pick(pick, self.joined())
        if d is None:
            return
        c = conv(d)
        # Forge mostly from what the device has not seen yet: a forgery of a seen one is a replay.
        unseen = [i for i in self.undelivered(d, dropped=True) if self.log.entries[i].epoch <= c.epoch()]
        index = unseen[k % len(unseen)] if unseen and k & 3 else k % len(self.log.entries)
        genuine = self.log.entries[index]
        forged = self.forgery(d, genuine, how, shift)
        if forged is None or forged.epoch > c.epoch():
            return  # a future envelope is held, unverified, until its epoch: not a refusal
        pending = c.state.pending
        if pending is not None and (forged.sender_device, forged.seq, forged.epoch, forged.content_hash) == (
            d.device_id,
            pending.seq,
            pending.epoch,
            pending.content_hash,
        ):
            return  # the very commit this device sent (only its clock rewritten): a true echo
        own = forged.sender_device == d.device_id and c.cursor.is_new(
            forged.kind, forged.epoch, forged.sender_device, forged.seq
        )
        before = self.fingerprint(d)
        try:
            result = c.process(forged, self.now())
        except UnknownOwnEnvelope:
            assert own, f"{d} called a {how} forgery of {genuine} its own"
        except PingError:
            assert not own, f"{d} did not flag a forgery naming it as sender as UnknownOwnEnvelope"
        else:
            assert result is None and not own, f"{d} accepted a {how} forgery of {genuine}: {result!r}"
        assert self.collect(d, None) == []
        assert self.fingerprint(d) == before, f"{d}: a {how} forgery of {genuine} changed its state"
        self.persist(d)

    def forgery(self, d: Device, genuine: MessageEnvelope, how: str, shift: int) -> MessageEnvelope | None:
        replace = dataclasses.replace
        if how == "seq":
            return replace(genuine, seq=genuine.seq + shift)
        if how == "hlc":
            return replace(genuine, hlc=Hlc(genuine.hlc.wall_ms + shift, genuine.hlc.counter))
        if how == "sender":
            others = [x.device_id for x in self.devices if x.device_id not in (d.device_id, genuine.sender_device)]
            return replace(genuine, sender_device=others[shift % len(others)])
        if how == "epoch":
            return replace(genuine, epoch=genuine.epoch - shift) if genuine.epoch >= shift else None
        if how == "payload":
            payload = bytearray(genuine.payload)
            payload[(shift * 7919) % len(payload)] ^= 1 << shift
            if genuine.kind is MessageKind.APPLICATION:
                return replace(genuine, payload=bytes(payload))
            return rebuild(genuine, genuine.kind, bytes(payload))
        if how == "hash":
            if genuine.kind is not MessageKind.APPLICATION:
                return None
            return replace(genuine, content_hash=hashlib.sha256(b"forged %d" % shift).digest())
        if how == "kind":
            if genuine.kind is MessageKind.APPLICATION:
                return rebuild(genuine, MessageKind.COMMIT, genuine.payload)
            return MessageEnvelope.application(
                genuine.conversation_id, genuine.epoch, genuine.sender_device, genuine.seq, genuine.hlc,
                genuine.payload, b"forged",
            )  # fmt: skip
        c = conv(d)
        pending = c.state.pending
        if how == "pending":  # a commit in place of this device's pending one: same seq and epoch
            if pending is None or genuine.kind is not MessageKind.COMMIT:
                return None
            forged = replace(genuine, sender_device=d.device_id, seq=pending.seq, epoch=pending.epoch)
            return rebuild(forged, MessageKind.COMMIT, genuine.payload)
        if how == "echo":  # this device's pending commit itself, under a later seq
            staged = d.book.staged
            if pending is None or staged is None:
                return None
            return replace(staged.commit, seq=pending.seq + shift)
        assert how == "own"
        seq = max(c.state.seq, c.cursor.highest_seq(d.device_id)) + shift
        return replace(genuine, sender_device=d.device_id, seq=seq)

    # -- invariants -------------------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        for d in self.joined():
            c = conv(d)
            epoch = c.epoch()
            assert c.cursor.epoch == epoch == c.meta.epoch, f"{d}: cursor {c.cursor}, meta {c.meta}, group {epoch}"
            assert epoch <= self.log.epoch
            if c.has_pending_commit:
                assert d.book.staged is not None, f"{d} has a pending commit nobody staged"
            # What is stored is what the conversation holds (each step persisted only changes).
            stored = d.stored.records
            assert (stored["meta"], stored["cursor"], stored["state"]) == (
                c.meta.encode(),
                c.cursor.encode(),
                c.state.encode(),
            ), f"{d}: stored records are stale"
            assert decode_device_leaves(stored["leaves"]) == c.device_leaves
            assert set(d.stored.held) == {key_of(e) for e in c.held}, f"{d}: stored held envelopes are stale"
            if c.state.removed:
                continue
            assert all(h.epoch > epoch for h in c.held), f"{d} at epoch {epoch} still holds {c.held}"
            # No fork: each member is on the log's branch of its epoch.
            assert self.state_id(d) == self.log.canonical[epoch], f"{d} forked at epoch {epoch}"
            assert c.export_secret(FORK_LABEL, b"", 16) == self.canonical_export(epoch)
            assert c.meta.member_count == len(c.members())
        self.clean = True

    def teardown(self) -> None:
        if self.clean:
            self.drain()
            for d in self.senders():
                if d.index in self.log.members and not conv(d).state.needs_self_update:
                    self.send(d)
            self.drain()
            self.check_everything_delivered()

    def drain(self) -> None:
        """The relay delivers everything still owed (newest first in the first round, so a
        device that fell behind holds the most, then in log order); pending commits are
        posted and settled; Welcomes are used. Repeats until nothing moves."""
        for rounds in range(100):
            moved = False
            for d in self.devices:
                if d.welcome is not None and d.conv is None:
                    self.join(d)
                    moved = True
            for d in self.joined():
                if d.book.staged is not None and not d.book.staged.posted:
                    self.post(d)
                    moved = True
                owed = self.undelivered(d, dropped=True)
                for index in owed[::-1] if rounds == 0 else owed:
                    self.deliver(d, index)
                    moved = moved or index in d.book.done
                if d.book.staged is not None and d.book.staged.posted:
                    self.settle(d, via_echo=False)
                    moved = True
            if not moved:
                return
        raise AssertionError("the log did not settle")

    def last_epoch(self, d: Device) -> int:
        """The last epoch whose messages the device can read."""
        removed = self.log.removed_at.get(d.index, NEVER) - 1
        return removed if d.book.stuck_at is None else min(removed, d.book.stuck_at)

    def check_everything_delivered(self) -> None:
        for d in self.joined():
            c = conv(d)
            if d.book.stuck_at is not None and d.book.stuck_at < self.log.removed_at.get(d.index, NEVER):
                assert c.epoch() == d.book.stuck_at
            elif d.index in self.log.removed_at:
                assert c.state.removed and c.epoch() == self.log.removed_at[d.index]
            else:
                assert c.epoch() == self.log.epoch and not c.has_pending_commit and d.book.staged is None
                assert c.held == [], f"{d} still holds {c.held} at the end"
        for key, info in self.sent.items():
            for d in self.joined():
                member = d.join_epoch <= info.epoch <= self.last_epoch(d)
                if info.sender is d or not member or key in d.book.expired or key in d.book.lost:
                    assert d.book.got[key] == 0
                else:
                    assert d.book.got[key] == 1, f"{d} never got {info.plaintext!r} (epoch {info.epoch})"


def conv(d: Device) -> Conversation:
    assert d.conv is not None
    return d.conv


def rebuild(genuine: MessageEnvelope, kind: MessageKind, payload: bytes) -> MessageEnvelope:
    return MessageEnvelope.handshake(
        kind, genuine.conversation_id, genuine.epoch, genuine.sender_device, genuine.seq, genuine.hlc, payload
    )


ConversationMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestConversationMachine = ConversationMachine.TestCase
