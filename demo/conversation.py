"""A scripted conversation between Alice and Bob, printed as it happens (run by demo/run.mjs)."""

from ping_web.mls import MlsRuntime

alice_provider = MlsRuntime.load().provider()
bob_provider = MlsRuntime.load().provider()
alice = alice_provider.create_identity(b"alice")
bob = bob_provider.create_identity(b"bob")
print(f"alice: signing key {alice.public_key.hex()[:16]}...  bob: {bob.public_key.hex()[:16]}...")

group = alice_provider.create_group(alice, b"demo-group-0001!")
print(f"alice created group {group.group_id!r} at epoch {group.epoch}")

commit, welcome = group.add_members(alice, [bob.key_package()])
group.merge_pending_commit()
bob_group = bob_provider.join_group(welcome)
print(f"bob joined from a {len(welcome)}-byte Welcome; both at epoch {group.epoch}/{bob_group.epoch}")

for sender, receiver, sender_group, receiver_group, text in [
    ("alice", "bob", group, bob_group, "Hi Bob, this is end-to-end encrypted."),
    ("bob", "alice", bob_group, group, "Hi Alice! Decrypted inside Pyodide."),
]:
    identity = alice if sender == "alice" else bob
    ciphertext = sender_group.create_message(identity, text.encode())
    got = receiver_group.process_message(ciphertext)
    print(f"{sender} -> {receiver}: {len(ciphertext)}-byte ciphertext, {receiver} decrypted {got.plaintext.decode()!r}")

update = bob_group.self_update(bob)
bob_group.merge_pending_commit()
group.process_message(update)
print(f"bob rotated his keys (self-update); epoch now {group.epoch}/{bob_group.epoch}")
got = bob_group.process_message(group.create_message(alice, b"Still here after the update."))
print(f"alice -> bob: bob decrypted {got.plaintext.decode()!r} at epoch {got.epoch}")
same = group.export_secret("ping/demo", b"", 16) == bob_group.export_secret("ping/demo", b"", 16)
print(f"exported secrets agree: {same}")
