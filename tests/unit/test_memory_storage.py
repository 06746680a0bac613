"""MemoryStorage on CPython: the conformance kit, without a browser."""

from __future__ import annotations

import asyncio

import pytest

from ping_web.errors import DatabaseInUse, InvalidInput
from ping_web.storage import Batch, MemoryStorage, Storage
from ping_web.storage.conformance import STORAGE_CHECKS, check_storage


def test_memory_storage_conforms() -> None:
    handles: list[MemoryStorage] = []

    async def open_storage() -> MemoryStorage:
        storage = handles[-1].reopen() if handles else MemoryStorage()
        handles.append(storage)
        return storage

    assert asyncio.run(check_storage(open_storage)) == list(STORAGE_CHECKS)
    assert isinstance(handles[0], Storage)
    assert len(handles) == 4  # opened, reopened (refused while open), reopened twice more


def test_reopen_needs_the_first_handle_closed_and_sees_its_data() -> None:
    async def run() -> None:
        first = MemoryStorage()
        batch = Batch()
        batch.put("mls", b"k", b"v")
        await first.commit(batch)
        with pytest.raises(DatabaseInUse):
            first.reopen()
        await first.close()
        second = first.reopen()
        assert await second.scan("mls") == [(b"k", b"v")]
        with pytest.raises(InvalidInput, match="unknown storage namespace"):
            await second.get("secrets", b"k")

    asyncio.run(run())
