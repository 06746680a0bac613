"""The protocol core: identifiers, the wire envelope, ordering, dedupe and the conversation logic.

Owns ids, the hybrid logical clock, the deterministic CBOR codec, the envelope and its
validation, the sync cursor, the persisted records and :class:`Conversation`, which turns
envelopes into state changes through the :class:`~ping_web.core.engine.MlsEngine` protocol.
Pure Python: it imports only the standard library and :mod:`ping_web.errors`; never ``js``, ``pyodide``, ``asyncio``, nor any other tier of
ping_web. It does no I/O, so all of it runs and is tested on CPython.
"""
