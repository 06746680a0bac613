"""A scripted conversation between Alice and Bob, printed as it happens (run by demo/run.mjs).

Both devices use MessagingClient over encrypted IndexedDB storage (a polyfill in Node) and
share a LocalDeliveryService. Midway, Bob's client is closed and reopened from storage alone.
"""

from ping_web.client import MessagingClient
from ping_web.delivery import LocalDeliveryService
from ping_web.mls.loader import wasm_size
from ping_web.storage.encrypted import EncryptedStorage


def show(who: str, text: str) -> None:
    print(f"  {who:<6} {text}")


delivery = LocalDeliveryService()
alice = await MessagingClient.open(await EncryptedStorage.open_indexeddb("demo-alice"), b"alice", delivery=delivery)
bob = await MessagingClient.open(await EncryptedStorage.open_indexeddb("demo-bob"), b"bob", delivery=delivery)
print(f"OpenMLS wasm module: {wasm_size()} bytes; two devices on encrypted IndexedDB storage")
show("alice", f"device {alice.device_id.hex[:12]}..  (user alice)")
show("bob", f"device {bob.device_id.hex[:12]}..  (user bob)")

await bob.publish_key_packages(2)
chat = await alice.create_conversation("lunch")
show("alice", f"created conversation {chat.name!r} at epoch {chat.epoch}")
await alice.add_members(chat.id, [(bob.device_id, await delivery.claim_key_package(bob.device_id))])
await bob.sync()
members = sorted(m.user_id.raw.decode() for m in (await bob.conversation(chat.id)).members())
show(
    "bob",
    f"joined {chat.name!r} through a Welcome: members {members}, epoch {(await bob.conversation(chat.id)).epoch()}",
)


async def say(sender: MessagingClient, receiver: MessagingClient, text: str) -> None:
    envelope = await sender.send(chat.id, text.encode())
    got = (await receiver.sync()).messages
    name = sender.user_id.raw.decode()
    show(
        name, f"sent {text!r} ({len(envelope.payload)}-byte MLS ciphertext, epoch {envelope.epoch}, seq {envelope.seq})"
    )
    for message in got:
        show(
            receiver.user_id.raw.decode(),
            f"decrypted {message.plaintext.decode()!r} from {message.sender_user.raw.decode()}",
        )


await say(alice, bob, "Lunch at noon?")
await say(bob, alice, "Yes! The usual place.")

await bob.close()
show("bob", "closed his client; reopening it from IndexedDB alone (fresh wasm instance)")
bob = await MessagingClient.open(await EncryptedStorage.open_indexeddb("demo-bob"), delivery=delivery)
history = [m.plaintext.decode() for m in await bob.history(chat.id)]
show("bob", f"restored {len(bob.conversations())} conversations; history of {chat.name!r}: {history}")

await bob.self_update(chat.id)
show("bob", f"rotated his keys (self-update): epoch now {(await bob.conversation(chat.id)).epoch()}")
await alice.sync()
await say(alice, bob, "See you there.")
same = (await alice.conversation(chat.id)).export_secret("ping/demo", b"", 16) == (
    await bob.conversation(chat.id)
).export_secret("ping/demo", b"", 16)
print(f"exported secrets agree: {same}")
await alice.close()
await bob.close()
