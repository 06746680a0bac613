"""One device shared by three tabs (ping_web.client.tabs.SharedDevice) in headless Chromium.

Three pages of one browser context open web/tabs/ for the same device (IndexedDB database
``ping_web:shared-alice``), each with ping_web in its own module worker: one leads, two
follow. A fourth page runs the delivery service and bob, a device of another user; the
tabs reach it over MessagePorts handed out by a SharedWorker. Every tab sends; the leader
is made to apply other tabs' calls without answering them, then its page is closed in the
middle of the burst; the next leader's renderer is then crashed the same way; the last tab
carries on. Every call that returned, and every call in flight that then completed on a
new leader, is in the device's history exactly once, in bob's, and once in the delivery
service's log, with no seq used twice. Waits are on events and replies, never on sleeps.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from playwright.sync_api import TimeoutError as PlaywrightTimeout

DEVICE = "shared-alice"


def open_tab(context: Any, base_url: str) -> Any:
    page = context.new_page()
    page.goto(f"{base_url}/web/tabs/index.html")
    page.evaluate("() => window.tabsReady")
    return page


def start(page: Any, script: str) -> None:
    """Run ``script`` in the page without waiting for it (its promise lands in window.pending)."""
    page.evaluate(f"() => {{ window.pending = (async () => {{ {script} }})(); }}")


def finish(page: Any) -> Any:
    return page.evaluate("() => window.pending")


def wait_for(page: Any, check: str) -> Any:
    """Resolves once the JS expression ``check`` holds in the page (re-checked on every event)."""
    return page.evaluate(f"() => tabs.waitFor(() => {check})")


def acked(page: Any, count: int) -> None:
    wait_for(page, f"tabs.sent.filter((r) => r.state === 'ok').length >= {count}")


def crash(context: Any, page: Any) -> None:
    """End ``page`` like a crash: its renderer process dies (CDP ``Page.crash``), workers
    and all, and nothing of it runs again. The command never gets an answer (the target is
    gone), so its reply is given up after a second; what is awaited is the crash event."""
    session = context.new_cdp_session(page)
    with page.expect_event("crash", timeout=30_000):
        try:
            session.send("Page.crash", timeout=1000)
        except PlaywrightTimeout:
            pass


def test_three_tabs_share_one_device_and_survive_their_leaders(context: Any, base_url: str) -> None:
    peer = open_tab(context, base_url)
    bob = peer.evaluate("() => tabs.startPeer()")["device_id"]

    pages = [open_tab(context, base_url) for _ in range(3)]
    for page in pages:  # at once: the first to get the Web Lock leads
        start(page, f"return await tabs.open({DEVICE!r}, 'alice')")
    infos = [finish(page) for page in pages]
    assert sorted(info["role"] for info in infos) == ["follower", "follower", "leader"]
    assert len({info["device_id"] for info in infos}) == 1
    leader = pages[[info["role"] for info in infos].index("leader")]
    followers = [page for page in pages if page is not leader]

    # A follower creates the conversation, the other adds bob, the leader applies both.
    chat = followers[0].evaluate("() => tabs.call('create_conversation', {name: 'tabs'})")["id"]
    followers[1].evaluate(f"() => tabs.call('add_member', {{conversation_id: {chat!r}, device_id: {bob!r}}})")
    assert chat in peer.evaluate("() => tabs.call('peer_sync')")["conversations"]

    records: dict[str, list[dict[str, Any]]] = {}  # what each page knew of its calls, last look
    names = {id(page): name for page, name in zip(pages, "abc", strict=True)}

    # 1. Everyone sends. The leader then applies the followers' calls but answers none, and
    #    its page is closed (no beforeunload) with both followers' calls applied, unanswered.
    for page in pages:
        start(page, f"await tabs.burst({chat!r}, {names[id(page)] + '1'!r}, 40)")
    for page in pages:
        acked(page, 3)
    leader.evaluate("() => tabs.call('withhold')")
    wait_for(leader, "tabs.events.filter((e) => e.event === 'withheld').length >= 2")
    records["leader 1"] = leader.evaluate("() => tabs.stop()")  # its own calls: no more from here
    leader.close(run_before_unload=False)
    for page in followers:
        finish(page)
    roles = [page.evaluate("() => tabs.call('stats')") for page in followers]
    assert sorted(r["role"] for r in roles) == ["follower", "leader"]
    assert sum(r["resent"] for r in roles) >= 2  # both withheld calls went out again
    second = followers[[r["role"] for r in roles].index("leader")]
    last = followers[[r["role"] for r in roles].index("follower")]
    assert second.evaluate("() => tabs.call('stats')")["replayed"] >= 2  # answered from their records

    # 2. The two left send; the new leader holds back the other's call, then its renderer crashes.
    for page in (second, last):
        start(page, f"await tabs.burst({chat!r}, {names[id(page)] + '2'!r}, 30)")
    for page in (second, last):
        acked(page, 2)
    second.evaluate("() => tabs.call('withhold')")
    wait_for(second, "tabs.events.some((e) => e.event === 'withheld')")
    records["leader 2"] = second.evaluate("() => tabs.stop()")
    crash(context, second)
    finish(last)
    stats = last.evaluate("() => tabs.call('stats')")
    assert stats["role"] == "leader" and stats["resent"] >= 1 and stats["replayed"] >= 1

    # 3. The last tab carries on alone.
    start(last, f"await tabs.burst({chat!r}, {names[id(last)] + '3'!r}, 5)")
    finish(last)
    records["last"] = last.evaluate("() => tabs.sent")
    last.evaluate("() => tabs.call('sync')")  # anything a dead leader left in the outbox goes out
    peer.evaluate("() => tabs.call('peer_sync')")

    ok = [r for rs in records.values() for r in rs if r["state"] == "ok"]
    unknown = {r["text"] for rs in records.values() for r in rs if r["state"] == "pending"}
    assert [r for r in records["last"] if r["state"] != "ok"] == []  # nothing failed or hung
    assert unknown <= {r["text"] for r in records["leader 1"] + records["leader 2"]}  # only dead tabs' own calls

    history = last.evaluate(f"() => tabs.call('history', {{conversation_id: {chat!r}}})")
    counts = Counter(m["text"] for m in history)
    for record in ok:
        assert counts[record["text"]] == 1, record
    assert all(counts[text] <= 1 for text in unknown)
    assert set(counts) <= {r["text"] for r in ok} | unknown
    seqs = {m["text"]: m["seq"] for m in history}
    assert all(seqs[r["text"]] == r["seq"] for r in ok)
    assert len({m["seq"] for m in history}) == len(history), "a seq was used twice"
    assert len(ok) >= 40 * 2 + 30 + 5

    bobs = peer.evaluate(f"() => tabs.call('peer_history', {{conversation_id: {chat!r}}})")
    assert Counter(m["text"] for m in bobs) == counts

    log = peer.evaluate(f"() => tabs.call('log', {{conversation_id: {chat!r}}})")
    alice = infos[0]["device_id"]
    by_seq: dict[int, set[str]] = {}
    for entry in log:
        if entry["sender"] == alice and entry["kind"] == "APPLICATION":
            by_seq.setdefault(entry["seq"], set()).add(entry["bytes"])
    assert all(len(copies) == 1 for copies in by_seq.values()), "two envelopes under one seq"
    assert set(by_seq) == set(seqs.values())

    # The surviving tab's view: every stored message, from events and the re-read at takeover.
    texts = sorted(counts)
    last.evaluate(f"() => tabs.waitFor(() => {texts!r}.every((t) => tabs.seen.has(t)))")
