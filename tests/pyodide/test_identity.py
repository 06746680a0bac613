"""Who is who, with real OpenMLS: device logs verified and pinned, linking with a code, add_user
adding exactly a user's verified devices, Welcomes and commits naming unverified devices,
safety numbers, revocation; and a delivery service that lies about device logs.

The relay versions (a real relay process) are at the end; they run in Node.
"""

from pytest_pyodide import run_in_pyodide


@run_in_pyodide(packages=["ping_web"])
async def test_only_a_users_verified_devices_are_added(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.ids import UserId
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import StateConflict, UnverifiedDevice
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, label="bob's phone")
    await bob.publish_key_packages(3)
    # A stranger who picks the name "bob": refused as a first device (bob has one) ...
    with pytest.raises(StateConflict, match="already has devices"):
        await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    # ... and, as a device waiting to be linked, never listed and never added.
    stranger = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, linked=True)
    await ds.publish_key_packages(UserId(b"bob"), stranger.device_id, [await stranger.new_key_package()])
    assert [d.device_id for d in await alice.devices_of(b"bob")] == [bob.device_id]
    assert (await alice.devices_of(b"bob"))[0].label == "bob's phone"

    chat = (await alice.create_conversation("chat")).id
    with pytest.raises(UnverifiedDevice, match="not in 'bob'"):
        await alice.add_members(chat, [(stranger.device_id, await ds.claim_key_package(stranger.device_id))])
    assert (await alice.conversation(chat)).epoch() == 0  # nothing changed
    # A verified key under another device id is refused too.
    with pytest.raises(UnverifiedDevice, match="belongs to device"):
        await alice.add_members(chat, [(stranger.device_id, await ds.claim_key_package(bob.device_id))])
    outcome = await alice.add_user(chat, b"bob")
    assert [m.user_id.raw for m in (await alice.conversation(chat)).members()] == [b"alice", b"bob"]
    assert outcome.welcome.epoch == 1
    await bob.sync()
    assert chat in {m.id for m in bob.conversations()}
    env = await alice.send(chat, b"hi bob")
    assert [m.plaintext for m in await bob.receive(env)] == [b"hi bob"]


@run_in_pyodide(packages=["ping_web"])
async def test_link_a_device_with_a_code_and_compare_safety_numbers(selenium):
    import asyncio

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.client.identity import IdentityEventKind
    from ping_web.core.devlog import LogOp
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import InvalidInput, LinkFailed
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    phone = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, label="phone")
    await phone.publish_key_packages(2)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_user(chat, b"bob")
    await phone.sync()

    # Safety numbers: the same 60 digits on both sides; each side's QR matches the other.
    mine, theirs = await alice.safety_number(b"bob"), await phone.safety_number(b"alice")
    assert mine.digits == theirs.digits and len(mine.digits) == 60
    with pytest.raises(InvalidInput):
        await alice.mark_verified(b"bob", scanned=mine.qr)  # her own code is not bob's
    assert (await alice.mark_verified(b"bob", scanned=theirs.qr)).verified
    events = []
    alice.on_identity_event = events.append

    # The phone shows a code; the laptop types it in; the phone approves.
    laptop = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, linked=True)
    code = await phone.start_link()
    with pytest.raises(LinkFailed):  # a wrong code opens no slot
        await laptop.request_link("0000-0000-0000-0000", timeout_s=0.1)
    linking = asyncio.ensure_future(laptop.request_link(str(code).lower(), label="laptop"))
    request = await phone.wait_link_request(code)
    assert request.label == "laptop" and request.device_id == laptop.device_id
    device = await phone.approve_link(code, request)
    own = await linking
    assert device.device_id == laptop.device_id and own.log.root == (await phone.device_log()).log.root
    assert [d.label for d in (await laptop.device_log()).devices] == ["phone", "laptop"]

    # The laptop was added to bob's device group and to the chat with its KeyPackages.
    await laptop.sync()
    assert {m.id for m in laptop.conversations()} == {m.id for m in phone.conversations()}
    await alice.sync()
    env = await alice.send(chat, b"both of you")
    assert [m.plaintext for m in await laptop.receive(env)] == [b"both of you"]

    # alice had verified bob: she hears that his devices changed; the number did not.
    changes = [e for e in events if e.kind is IdentityEventKind.DEVICES_CHANGED]
    assert changes and changes[0].verified and changes[0].changes[0].op is LogOp.ADD
    assert changes[0].changes[0].device.label == "laptop"
    assert (await alice.safety_number(b"bob")).digits == mine.digits
    assert (await laptop.safety_number(b"alice")).digits == mine.digits


@run_in_pyodide(packages=["ping_web"])
async def test_welcomes_and_commits_naming_unverified_devices(selenium):
    import pytest

    from ping_web.client import MessagingClient
    from ping_web.client.identity import IdentityEventKind
    from ping_web.core.ids import UserId
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import UnverifiedDevice
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    carol = await MessagingClient.open(MemoryStorage(), b"carol", delivery=ds)
    mallory = await MessagingClient.open(MemoryStorage(), b"mallory", delivery=ds)
    await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)  # the real bob
    fake_bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, linked=True)  # never linked
    ghost = await MessagingClient.open(MemoryStorage(), b"ghost", linked=True)  # no log anywhere
    await carol.publish_key_packages(2)
    fake_kp = await fake_bob.new_key_package()
    mallory._vetting.enabled = False  # a hostile client skips every check

    # A Welcome into a group that holds an unverified device is refused, and nothing joined.
    trap = (await mallory.create_conversation("trap")).id
    outcome = await mallory.add_members(trap, [(carol.device_id, await ds.claim_key_package(carol.device_id)),
                                               (fake_bob.device_id, fake_kp)])  # fmt: skip
    with pytest.raises(UnverifiedDevice, match="'bob'") as refused:
        await carol.join(outcome.welcome)
    assert refused.value.user_id == UserId(b"bob")
    assert trap not in {m.id for m in carol.conversations()}
    pulled = await carol.sync()  # the same Welcome from the mailbox: refused, reported, acknowledged
    assert trap not in {m.id for m in carol.conversations()}
    assert any(isinstance(error, UnverifiedDevice) for _, error in pulled.rejected)
    assert await ds.fetch_welcomes(carol.device_id) == []

    # A member whose user has no device log at the service yet: the Welcome waits (a new
    # user may not have published it yet); it is neither joined nor thrown away.
    await carol.publish_key_packages(1)
    wait = (await mallory.create_conversation("wait")).id
    outcome = await mallory.add_members(wait, [(carol.device_id, await ds.claim_key_package(carol.device_id)),
                                               (ghost.device_id, await ghost.new_key_package())])  # fmt: skip
    pulled = await carol.sync()
    assert wait not in {m.id for m in carol.conversations()} and pulled.rejected == []
    assert await ds.fetch_welcomes(carol.device_id) == [outcome.welcome.encode()]  # still there

    # A commit by another member that adds an unverified device: applied (the log took it),
    # reported, and this device sends nothing there until the device is removed.
    chat = (await alice.create_conversation("chat")).id
    await mallory.publish_key_packages(1)
    await alice.add_user(chat, b"mallory")
    await mallory.sync()
    await mallory.add_members(chat, [(fake_bob.device_id, await fake_bob.new_key_package())])
    events = []
    alice.on_identity_event = events.append
    await alice.sync()
    (event,) = [e for e in events if e.kind is IdentityEventKind.UNVERIFIED_MEMBER]
    assert event.conversation_id == chat and event.user_id == UserId(b"bob")
    ((member, reason),) = await alice.unverified_members(chat)
    assert member.user_id == UserId(b"bob") and "device list" in reason
    with pytest.raises(UnverifiedDevice, match="nothing was sent"):
        await alice.send(chat, b"secret")
    assert [m.plaintext for m in await alice.history(chat)] == []
    await alice.remove_members(chat, [member.leaf_index])
    assert await alice.unverified_members(chat) == []
    env = await alice.send(chat, b"now it is safe")
    assert env.epoch == 3


@run_in_pyodide(packages=["ping_web"])
async def test_a_delivery_service_that_lies_about_device_logs(selenium):
    import asyncio

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.client.identity import IdentityEventKind
    from ping_web.core.devlog import LogOp
    from ping_web.delivery import DeviceLogPage, LocalDeliveryService
    from ping_web.errors import DeviceLogInvalid, IdentityChanged, IdentityChangeKind
    from ping_web.storage import MemoryStorage

    class LyingDelivery(LocalDeliveryService):
        """Serves what ``lie`` returns for a user's log instead of the truth."""

        lie = None

        async def device_log(self, user_id, after):
            if self.lie is not None and user_id.raw == b"bob":
                return self.lie(await super().device_log(user_id, -1), after)
            return await super().device_log(user_id, after)

    ds = LyingDelivery()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    bob = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    await bob.publish_key_packages(4)
    other = LocalDeliveryService()  # a second "bob" made on another service: another identity
    impostor = await MessagingClient.open(MemoryStorage(), b"bob", delivery=other)
    impostor_log = (await other.device_log(bob.user_id, -1)).entries
    laptop = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, linked=True)
    first_pin = (await alice.contact(b"bob")).log
    events = []
    alice.on_identity_event = events.append

    # bob links a laptop (through the honest service)
    code = await bob.start_link()
    linking = asyncio.ensure_future(laptop.request_link(code))
    await bob.approve_link(code, await bob.wait_link_request(code))
    await linking
    truth = (await ds.device_log(bob.user_id, -1)).entries
    assert len(truth) == 2
    pinned = (await alice.contact(b"bob")).log  # alice reads on: the laptop is there
    assert pinned.root == first_pin.root and pinned.seq == 1

    cases = {
        "swap": (lambda page, after: DeviceLogPage(impostor_log, 0), IdentityChangeKind.NEW_ROOT),
        "drop": (lambda page, after: DeviceLogPage([], -1), IdentityChangeKind.ROLLBACK),
        "roll back": (lambda page, after: DeviceLogPage(page.entries[:1], 0), IdentityChangeKind.ROLLBACK),
    }
    for name, (lie, kind) in cases.items():
        ds.lie = lie
        with pytest.raises(IdentityChanged) as changed:
            await alice.add_user((await alice.create_conversation(name)).id, b"bob")
        assert changed.value.kind is kind, name
        contact = await alice.contact(b"bob", refresh=False)
        assert contact.conflict is kind and contact.log == pinned  # nothing but the flag changed
    # One event per change of conflict (the second rollback is the same conflict as the first).
    assert [e.conflict for e in events if e.kind is IdentityEventKind.IDENTITY_CHANGED] == [
        IdentityChangeKind.NEW_ROOT, IdentityChangeKind.ROLLBACK]  # fmt: skip

    # A forged entry that adds the impostor's key, "signed" by nobody in the log: invalid.
    forged = bytearray(truth[1])
    forged[-70] ^= 1  # inside the signature
    ds.lie = lambda page, after: DeviceLogPage([bytes(forged)], 1)
    with pytest.raises(DeviceLogInvalid):
        await alice.contact(b"bob")

    # The truth again: the conflict clears and the laptop is there.
    ds.lie = None
    contact = await alice.contact(b"bob")
    assert contact.conflict is None and [d.device_id for d in contact.devices] == [bob.device_id, laptop.device_id]
    added = [e for e in events if e.kind is IdentityEventKind.DEVICES_CHANGED]
    assert added[0].changes[0].op is LogOp.ADD and added[0].changes[0].device.device_id == laptop.device_id
    # accept_identity takes whatever is served now (after people compared numbers).
    ds.lie = cases["swap"][0]
    accepted = await alice.accept_identity(b"bob")
    assert accepted.log.root != pinned.root and not accepted.verified
    del impostor


@run_in_pyodide(packages=["ping_web"])
async def test_revoking_a_device(selenium):
    import asyncio

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.devlog import DeviceStatus
    from ping_web.delivery import LocalDeliveryService
    from ping_web.errors import NotAMember, PingError
    from ping_web.storage import MemoryStorage

    ds = LocalDeliveryService()
    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=ds)
    phone = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds)
    lost = await MessagingClient.open(MemoryStorage(), b"bob", delivery=ds, linked=True)
    code = await phone.start_link()
    linking = asyncio.ensure_future(lost.request_link(code))
    await phone.approve_link(code, await phone.wait_link_request(code))
    await linking
    await phone.publish_key_packages(2)
    await lost.publish_key_packages(2)
    chat = (await alice.create_conversation("chat")).id
    await alice.add_user(chat, b"bob")
    await phone.sync()
    await lost.sync()

    commits = await phone.revoke_device(lost.device_id)
    assert len(commits) == 2  # the device group and the chat
    own = await phone.device_log()
    assert own.log.status(lost.signer.public_key) is DeviceStatus.REVOKED
    assert [d.device_id for d in await alice.devices_of(b"bob")] == [phone.device_id]
    await alice.sync()
    await lost.sync()
    env = await alice.send(chat, b"after the revocation")
    assert [m.plaintext for m in await phone.receive(env)] == [b"after the revocation"]
    with pytest.raises((NotAMember, PingError)):
        await lost.receive(env)


@run_in_pyodide(packages=["ping_web"])
async def _through_a_relay(selenium, url):
    import asyncio

    import pytest

    from ping_web.client import MessagingClient
    from ping_web.core.ids import UserId
    from ping_web.delivery.relay import RelayDelivery
    from ping_web.errors import PingError, StateConflict
    from ping_web.storage import MemoryStorage

    def delivery():
        return RelayDelivery(url, push="off")

    alice = await MessagingClient.open(MemoryStorage(), b"alice", delivery=delivery())
    phone = await MessagingClient.open(MemoryStorage(), b"bob", delivery=delivery(), label="phone")
    await phone.publish_key_packages(3)
    # Someone else picks "bob": the relay refuses to register a first device under it.
    with pytest.raises(StateConflict, match="already has devices"):
        await MessagingClient.open(MemoryStorage(), b"bob", delivery=delivery())
    # The relay lists only bob's verified device; alice checks it against bob's log anyway.
    assert [d.device_id for d in await alice.devices_of(b"bob")] == [phone.device_id]

    # A laptop linked with a code shown on the phone.
    laptop = await MessagingClient.open(MemoryStorage(), b"bob", delivery=delivery(), linked=True)
    code = await phone.start_link()
    linking = asyncio.ensure_future(laptop.request_link(str(code), label="laptop"))
    await phone.approve_link(code, await phone.wait_link_request(code))
    await linking
    await laptop.publish_key_packages(2)
    assert sorted(d.label for d in await alice.devices_of(b"bob")) == ["laptop", "phone"]
    relay_list = await alice._delivery.devices_of(UserId(b"bob"))
    assert sorted(relay_list) == sorted([phone.device_id, laptop.device_id])

    chat = (await alice.create_conversation("chat")).id
    await alice.add_user(chat, b"bob")
    for bob in (phone, laptop):
        await bob.sync()
    env = await alice.send(chat, b"to both of bob's devices")
    for bob in (phone, laptop):
        await bob.sync()
        assert [m.plaintext for m in await bob.history(chat)] == [b"to both of bob's devices"]
    assert (await alice.safety_number(b"bob")).digits == (await laptop.safety_number(b"alice")).digits

    # The phone revokes the laptop: out of the log, out of the conversations, and the relay
    # no longer lets it in.
    await phone.revoke_device(laptop.device_id)
    await alice.sync()
    await alice.send(chat, b"after the laptop was revoked")
    with pytest.raises(PingError):
        await laptop.sync()
    assert [m.plaintext for m in await laptop.history(chat)] == [b"to both of bob's devices"]
    await phone.sync()
    assert [m.plaintext for m in await phone.history(chat)][-1] == b"after the laptop was revoked"
    del env


def test_identity_through_a_relay(selenium, relay):
    _through_a_relay(selenium, relay.url)
