"""The checks members pass: every device in a conversation is a verified device of its user.

:class:`MemberVetting` asks :class:`~ping_web.client.identity.Identities` about the devices
MLS names: the KeyPackages this device adds (before the commit is made), the members of a
Welcome (joined inside a savepoint, undone unless they pass), and the members of each conversation (before this device
sends there, and after commits of others, to tell the application). It is on only when a
delivery service serves device logs (``enabled``); without one the application hands
KeyPackages and Welcomes over itself and is the directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ping_web.client.identity import Identities, IdentityEvent, IdentityEventKind, describe_key, user_text
from ping_web.core.conversation import Conversation
from ping_web.core.devlog import DeviceStatus
from ping_web.core.ids import ConversationId, DeviceId, UserId
from ping_web.core.records import MemberInfo
from ping_web.errors import DeliveryUnavailable, InvalidInput, PingError, UnverifiedDevice
from ping_web.mls.engine import OpenMlsEngine


class LogsNeeded(PingError):
    """A Welcome names members whose users' logs this device has not read yet (``users``):
    read them and join again. ``final``: read already, and the service has no log for them:
    the Welcome waits."""

    def __init__(self, users: set[UserId], *, final: bool = False) -> None:
        names = ", ".join(sorted(repr(user_text(u)) for u in users))
        super().__init__(f"the device lists of {names} are needed to check this Welcome's members")
        self.users = users
        self.final = final


class MemberVetting:
    """Checks of devices against their users' verified device logs."""

    def __init__(
        self, identities: Identities, engine: Callable[[], OpenMlsEngine], emit: Callable[[IdentityEvent], None],
        *, enabled: bool,
    ) -> None:  # fmt: skip
        self._identities = identities
        self._engine = engine
        self._emit = emit
        self.enabled = enabled
        self._checked: dict[ConversationId, tuple[int, int]] = {}
        """Conversations whose members all passed: (epoch, identities revision) then."""
        self._reported: set[tuple[ConversationId, bytes]] = set()
        self._fresh: set[UserId] = set()
        """Users whose logs were read in the current round of Welcomes."""

    def forget(self) -> None:
        self._checked.clear()

    async def key_packages(self, entries: Sequence[tuple[DeviceId, bytes]]) -> None:
        """Every KeyPackage to add belongs to an active device of its user's verified log
        (and to the device id it is added as); else :class:`UnverifiedDevice`."""
        if not self.enabled:
            return
        for device_id, key_package in entries:
            if not isinstance(key_package, (bytes, bytearray)):
                raise InvalidInput("a KeyPackage must be bytes")
            identity, key = self._engine().inspect_key_package(bytes(key_package))
            await self._identities.require(UserId(identity), key, device_id)

    async def before_send(self, conversation: Conversation) -> None:
        """Refuse to send where a member is not a verified device of its user."""
        problems = await self.problems(conversation)
        if problems:
            member, reason = problems[0]
            raise UnverifiedDevice(
                f"device {describe_key(member.signature_key)} of {user_text(member.user_id)!r} in this conversation: "
                f"{reason}; nothing was sent. Remove it (or have its user link it) first",
                member.user_id, member.signature_key, reason,
            )  # fmt: skip

    async def problems(self, conversation: Conversation) -> list[tuple[MemberInfo, str]]:
        """Members that are not active devices of their users' verified logs, and why (the
        logs of users with unknown keys are read on first)."""
        if not self.enabled or conversation.state.removed:
            return []
        if self._checked.get(conversation.id) == (conversation.epoch(), self._identities.revision):
            return []
        members = conversation.members()
        for user in {m.user_id for m in members if self._status(m)[0] is DeviceStatus.UNKNOWN}:
            try:
                await self._identities.refresh(user)
            except PingError:  # unreachable, or a log that does not verify: judged on the pin
                pass
        problems = [(m, reason) for m in members for status, reason in [self._status(m)]
                    if status is not DeviceStatus.ACTIVE]  # fmt: skip
        if not problems:
            self._checked[conversation.id] = (conversation.epoch(), self._identities.revision)
        return problems

    async def report(self, conversations: Iterable[Conversation]) -> None:
        """Tell the application, once each, about members that fail the check."""
        for conversation in conversations:
            for member, reason in await self.problems(conversation):
                mark = (conversation.id, member.signature_key)
                if mark not in self._reported:
                    self._reported.add(mark)
                    self._emit(IdentityEvent(
                        IdentityEventKind.UNVERIFIED_MEMBER, member.user_id, conversation_id=conversation.id,
                        key=member.signature_key, reason=reason,
                    ))  # fmt: skip

    async def fetch_logs(self, users: Iterable[UserId]) -> None:
        """Read these users' logs (before a Welcome naming them is tried again); their
        judgement is final from now on: a user the service has no log for stays unknown."""
        for user in users:
            try:
                await self._identities.refresh(user)
            except DeliveryUnavailable:
                raise
            except PingError:
                pass  # a log that does not verify: the join's check refuses the Welcome, with the reason
            self._fresh.add(user)

    def joined(self, conversation: Conversation) -> None:
        """Raise if a member of a conversation just joined is not a verified device (the
        caller's savepoint undoes the join): :class:`LogsNeeded` while a member's user has not
        been read yet in this round (the caller reads the logs and joins again), or has no log
        at the service at all (the Welcome waits); :class:`UnverifiedDevice` once a log shows
        a member is not one of its user's devices."""
        if not self.enabled:
            return
        members = conversation.members()
        missing = {m.user_id for m in members if self._status(m)[0] is DeviceStatus.UNKNOWN}
        if missing - self._fresh:
            raise LogsNeeded(missing - self._fresh)
        for member in members:
            status, reason = self._status(member)
            if status is DeviceStatus.UNKNOWN and self._identities.cached(member.user_id) is None:
                raise LogsNeeded({member.user_id}, final=True)
            if status is not DeviceStatus.ACTIVE:
                raise UnverifiedDevice(
                    f"the Welcome to {conversation.id.hex[:8]} has device {describe_key(member.signature_key)} of "
                    f"{user_text(member.user_id)!r} as a member: {reason}; not joined",
                    member.user_id, member.signature_key, reason,
                )  # fmt: skip

    def end_round(self) -> None:
        """Forget which logs were read for this round of Welcomes."""
        self._fresh.clear()

    def _status(self, member: MemberInfo) -> tuple[DeviceStatus, str]:
        return self._identities.status(member.user_id, member.signature_key)
