"""An in-memory delivery service for tests, demos and single-process apps.

:class:`LocalDeliveryService` keeps, per conversation, an ordered log that accepts exactly
one commit per epoch (the first one submitted wins; a late one is refused so its author
discards it and applies the winner), a Welcome mailbox per device, and a KeyPackage
directory where each KeyPackage is handed out once. Everything is in memory; the port
(:mod:`ping_web.delivery.port`) lets workers share one instance. It keeps no roster and
authenticates no one: every device may read and post every log. It keeps users' device
logs with the log's rules (chain, signers, no key coming back) but checks no signature:
clients verify them (``ping_web.core.devlog``).
"""

from __future__ import annotations

from collections import defaultdict

from ping_web.core.devlog import DeviceLog, LogEntry, LogOp
from ping_web.core.envelope import MessageEnvelope, MessageKind
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.linking import LINK_ID_SIZE, MAX_LINK_MESSAGE
from ping_web.delivery.base import EPOCH_WINDOW, DeviceLogPage, DeviceSigner, LogPage, RosterChange
from ping_web.errors import InvalidInput, LinkFailed, StateConflict


class LocalDeliveryService:
    """In-memory :class:`Delivery`: ordered logs, Welcome mailboxes, KeyPackage directory."""

    def __init__(self) -> None:
        self._logs: dict[ConversationId, list[bytes]] = defaultdict(list)
        self._next_commit_epoch: dict[ConversationId, int] = {}
        self._commits: dict[tuple[ConversationId, DeviceId, int], bytes] = {}
        self._mailboxes: dict[DeviceId, list[bytes]] = defaultdict(list)
        self._key_packages: dict[DeviceId, list[bytes]] = defaultdict(list)
        self._devices: dict[UserId, list[DeviceId]] = defaultdict(list)
        self._device_logs: dict[UserId, DeviceLog] = {}
        self._links: dict[bytes, list[bytes | None]] = {}  # link id -> [request, answer]
        self._group_infos: dict[ConversationId, bytes] = {}

    # The methods are async for the protocol; they never await, so each is atomic.

    def bind(self, device: DeviceSigner) -> None:
        """Nothing to do: this service authenticates no one."""

    async def create_group(self, conversation_id: ConversationId) -> None:
        """Nothing to do: a log exists from its first entry."""

    async def post(self, envelope: bytes) -> bool:
        return self.post_now(envelope)

    def post_now(self, envelope: bytes) -> bool:
        """:meth:`post` without a coroutine (for bridges that answer synchronously).

        A commit posted here is taken like :meth:`commit` without Welcome or roster."""
        decoded = MessageEnvelope.decode(envelope)
        if decoded.kind is MessageKind.WELCOME:
            raise InvalidInput("welcomes go to mailboxes: send them with their commit (commit)")
        if decoded.kind is MessageKind.COMMIT:
            return self._append_commit(decoded, envelope)
        current = self._next_commit_epoch.get(decoded.conversation_id)
        if current is not None and not current - EPOCH_WINDOW <= decoded.epoch <= current:
            return False
        self._logs[decoded.conversation_id].append(bytes(envelope))
        return True

    async def commit(
        self, commit: bytes, welcome: bytes | None, roster: RosterChange, *, group_info: bytes | None = None,
        external: bool = False,
    ) -> bool:  # fmt: skip
        decoded = MessageEnvelope.decode(commit)
        if decoded.kind is not MessageKind.COMMIT:
            raise InvalidInput("commit takes a COMMIT envelope")
        if welcome is not None and MessageEnvelope.decode(welcome).kind is not MessageKind.WELCOME:
            raise InvalidInput("a commit's Welcome must be a WELCOME envelope")
        if (welcome is None) != (not roster.added):
            raise InvalidInput("a Welcome goes with a commit exactly when it adds devices")
        if not self._append_commit(decoded, commit):
            return False
        for device in roster.added:
            self._mailboxes[device].append(bytes(welcome or b""))
        if group_info is not None:
            self._group_infos[decoded.conversation_id] = bytes(group_info)
        return True

    async def user_groups(self) -> list[ConversationId]:
        """None: this service keeps no roster."""
        return []

    async def group_info(self, conversation_id: ConversationId) -> bytes | None:
        return self._group_infos.get(conversation_id)

    def _append_commit(self, decoded: MessageEnvelope, raw: bytes) -> bool:
        conversation = decoded.conversation_id
        key = (conversation, decoded.sender_device, decoded.seq)
        if self._commits.get(key) == bytes(raw):
            return True  # this very commit again (its first post's answer was lost)
        expected = self._next_commit_epoch.get(conversation, decoded.epoch)
        if decoded.epoch != expected:
            return False
        self._next_commit_epoch[conversation] = decoded.epoch + 1
        self._commits[key] = bytes(raw)
        self._logs[conversation].append(bytes(raw))
        return True

    async def fetch(self, conversation_id: ConversationId, position: int) -> LogPage:
        log = self._logs.get(conversation_id, [])
        if position < 0:
            raise InvalidInput("log positions start at 0")
        return LogPage(log[position:], len(log))

    async def send_welcome(self, device_ids: list[DeviceId], welcome: bytes) -> None:
        """Leave ``welcome`` in the mailbox of each device (for callers that deliver a
        Welcome themselves; :meth:`commit` does it with the commit)."""
        if MessageEnvelope.decode(welcome).kind is not MessageKind.WELCOME:
            raise InvalidInput("send_welcome takes WELCOME envelopes")
        for device in device_ids:
            self._mailboxes[device].append(bytes(welcome))

    async def fetch_welcomes(self, device_id: DeviceId) -> list[bytes]:
        """Every Welcome waiting for ``device_id``, until acknowledged."""
        return list(self._mailboxes.get(device_id, []))

    async def ack_welcomes(self, device_id: DeviceId, welcomes: list[bytes]) -> None:
        """Drop these Welcomes from the device's mailbox."""
        done = {bytes(w) for w in welcomes}
        left = [w for w in self._mailboxes.get(device_id, []) if w not in done]
        if left:
            self._mailboxes[device_id] = left
        else:
            self._mailboxes.pop(device_id, None)

    async def publish_key_packages(self, user_id: UserId, device_id: DeviceId, key_packages: list[bytes]) -> None:
        if device_id not in self._devices[user_id]:
            if any(device_id in devices for devices in self._devices.values()):
                raise StateConflict("this device id is registered to another user")
            self._devices[user_id].append(device_id)
        self._key_packages[device_id].extend(bytes(kp) for kp in key_packages)

    async def claim_key_package(self, device_id: DeviceId) -> bytes | None:
        available = self._key_packages.get(device_id)
        return available.pop(0) if available else None

    async def devices_of(self, user_id: UserId) -> list[DeviceId]:
        log = self._device_logs.get(user_id)
        if log is not None:
            return [device.device_id for device in log.active()]
        return list(self._devices.get(user_id, []))

    async def device_log(self, user_id: UserId, after: int) -> DeviceLogPage:
        log = self._device_logs.get(user_id)
        if log is None:
            return DeviceLogPage([], -1)
        return DeviceLogPage(list(log.entries[max(0, after + 1) :]), log.seq)

    async def append_device_log(self, entry: bytes) -> None:
        decoded = LogEntry.decode(entry)
        log = self._device_logs.get(decoded.user_id)
        if log is not None and decoded.seq < len(log.entries):
            if log.entries[decoded.seq] == bytes(entry):
                return  # this very entry again
            raise StateConflict(f"entry {decoded.seq} of this device log is taken: read the log again")
        if decoded.op is LogOp.GENESIS and log is None:
            self._device_logs[decoded.user_id] = DeviceLog.start(entry, None)
            return
        if log is None:
            raise StateConflict("this user has no device log yet: its first device starts it")
        self._device_logs[decoded.user_id] = log.extend([entry], None)[0]

    async def open_link(self, link_id: bytes) -> None:
        self._links.setdefault(_link_id(link_id), [None, None])

    async def send_link_request(self, link_id: bytes, request: bytes) -> None:
        slot = self._link_slot(link_id)
        if slot[0] is not None and slot[0] != request:
            raise LinkFailed("this link code was used already: make a new one")
        slot[0] = _link_message(request)

    async def link_request(self, link_id: bytes) -> bytes | None:
        return self._link_slot(link_id)[0]

    async def send_link_answer(self, link_id: bytes, answer: bytes) -> None:
        self._link_slot(link_id)[1] = _link_message(answer)

    async def link_answer(self, link_id: bytes) -> bytes | None:
        return self._link_slot(link_id)[1]

    def _link_slot(self, link_id: bytes) -> list[bytes | None]:
        slot = self._links.get(_link_id(link_id))
        if slot is None:
            raise LinkFailed("no device opened this link: check the code, or make a new one")
        return slot

    def log_length(self, conversation_id: ConversationId) -> int:
        return len(self._logs.get(conversation_id, []))


def _link_id(link_id: bytes) -> bytes:
    if not isinstance(link_id, (bytes, bytearray)) or len(link_id) != LINK_ID_SIZE:
        raise InvalidInput(f"a link id is {LINK_ID_SIZE} bytes")
    return bytes(link_id)


def _link_message(message: bytes) -> bytes:
    if not isinstance(message, (bytes, bytearray)) or not 1 <= len(message) <= MAX_LINK_MESSAGE:
        raise InvalidInput(f"a link message is 1..{MAX_LINK_MESSAGE} bytes")
    return bytes(message)
