"""Hypothesis strategies shared by the unit tests."""

from __future__ import annotations

from hypothesis import strategies as st

from ping_web.core.codec import U32_MAX, U64_MAX
from ping_web.core.envelope import MessageEnvelope, MessageKind
from ping_web.core.hlc import Hlc
from ping_web.core.ids import ConversationId, DeviceId, UserId

u64 = st.integers(0, U64_MAX)
u32 = st.integers(0, U32_MAX)
conversation_ids = st.binary(min_size=16, max_size=16).map(ConversationId)
device_ids = st.binary(min_size=16, max_size=16).map(DeviceId)
user_ids = st.binary(min_size=1, max_size=255).map(UserId)
hlcs = st.builds(Hlc, u64, u32)
payloads = st.binary(min_size=1, max_size=64)

# Values in codec's data model, for encode/decode properties.
cbor_scalars = (
    st.none() | st.booleans() | st.integers(-(1 << 64), U64_MAX) | st.binary(max_size=40) | st.text(max_size=30)
)
cbor_values = st.recursive(
    cbor_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=30), inner, max_size=5)
        | st.dictionaries(st.binary(max_size=30), inner, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def envelopes(draw: st.DrawFn) -> MessageEnvelope:
    kind = draw(st.sampled_from(MessageKind))
    conversation_id, device, hlc = draw(conversation_ids), draw(device_ids), draw(hlcs)
    seq = draw(st.integers(1, U64_MAX))
    payload = draw(payloads)
    if kind is MessageKind.APPLICATION:
        epoch = draw(u64)
        plaintext = draw(st.binary(max_size=64))
        return MessageEnvelope.application(conversation_id, epoch, device, seq, hlc, payload, plaintext)
    low = 1 if kind is MessageKind.WELCOME else 0
    high = U64_MAX - 1 if kind is MessageKind.COMMIT else U64_MAX
    epoch = draw(st.integers(low, high))
    return MessageEnvelope.handshake(kind, conversation_id, epoch, device, seq, hlc, payload)
