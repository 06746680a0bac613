"""docs/guide.md stays true: its Python blocks run in Pyodide and print what it says.

Every ```python block of the guide runs in Pyodide (Node or Chromium, whichever
``--runtime`` is), with top-level ``await``; when the block after it is marked
``<!-- guide: output -->``, the printed text must equal that block. Blocks marked
``<!-- guide: skip ... -->`` are not run (IPython syntax, network, configuration). The
pytest-pyodide example (marked ``<!-- guide: test -->``) is a test of this file, verbatim.
The page and worker examples run in Chromium: tests/lite/test_guide_page.py.
"""

import re
from pathlib import Path

import pytest
from pytest_pyodide import run_in_pyodide

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
_BLOCK = re.compile(r"(?:^<!-- guide: (?P<marker>.*?) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.S | re.M)


def guide_blocks() -> list[tuple[str, str, str]]:
    """(marker, language, text) of every fenced block of the guide, in order."""
    return [(m["marker"] or "", m["lang"], m["body"]) for m in _BLOCK.finditer(GUIDE.read_text())]


def python_snippets() -> list[tuple[str, str | None]]:
    """Runnable Python blocks, each with the output the guide shows for it (if any)."""
    blocks = guide_blocks()
    snippets = []
    for i, (marker, lang, body) in enumerate(blocks):
        if lang != "python" or marker:
            continue
        after = blocks[i + 1] if i + 1 < len(blocks) else ("", "", "")
        snippets.append((body, after[2] if after[0] == "output" else None))
    return snippets


SNIPPETS = python_snippets()


def test_the_guide_has_examples():
    assert len(SNIPPETS) >= 2
    assert sum(1 for marker, _, _ in guide_blocks() if marker == "test") == 1


def test_the_pytest_example_is_a_test_here():
    (example,) = [body for marker, _, body in guide_blocks() if marker == "test"]
    imports, _, test = example.partition("\n\n\n")
    source = Path(__file__).read_text()
    assert imports in source and test in source, "the guide's pytest example differs from test_bob_reads_alice"


@run_in_pyodide(packages=["ping_web"])
async def test_bob_reads_alice(selenium):
    from ping_web.client import MessagingClient
    from ping_web.delivery import LocalDeliveryService

    delivery = LocalDeliveryService()
    alice = await MessagingClient.open(None, b"alice", delivery=delivery)
    bob = await MessagingClient.open(None, b"bob", delivery=delivery)
    await bob.publish_key_packages(1)
    chat = await alice.create_conversation()
    await alice.add_members(chat.id, [(bob.device_id, await delivery.claim_key_package(bob.device_id))])
    await bob.sync()
    await alice.send(chat.id, b"hello")
    assert [m.plaintext for m in (await bob.sync()).messages] == [b"hello"]


@run_in_pyodide(packages=["ping_web"])
async def run_snippet(selenium, source):
    """Run ``source`` with top-level await in a fresh namespace; returns what it printed.

    The guide's databases (``guide-*``) are deleted first: the browser keeps them between
    tests, and each example starts from scratch as a reader's would.
    """
    import contextlib
    import io

    import js
    from pyodide.code import eval_code_async

    from ping_web.storage.indexeddb import delete_database

    for info in await js.indexedDB.databases():
        if str(info.name).startswith("ping_web:guide-"):
            await delete_database(str(info.name).removeprefix("ping_web:"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        await eval_code_async(source, globals={"__name__": "__guide__"})
    return printed.getvalue()


@pytest.mark.parametrize(("source", "expected"), SNIPPETS, ids=[f"block{i + 1}" for i in range(len(SNIPPETS))])
def test_guide_snippet(selenium, source, expected):
    printed = run_snippet(selenium, source)
    if expected is not None:
        assert printed == expected
