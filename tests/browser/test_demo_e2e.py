"""End to end through the demo page (web/index.html) in headless Chromium, through its UI.

Each user is a separate browser context (its own IndexedDB and worker: its own Pyodide,
ping_web, real OpenMLS wasm, encrypted database), as two browser profiles or two machines
would be. They talk through a relay process started here (uvicorn on 127.0.0.1, SQLite)
that also serves the page, as ``./build.sh serve`` does.

The relay is SIGKILLed in the middle of a burst of sends from both users and started again
on the same database: both devices reconnect, what was sent meanwhile waits in their
outboxes and goes out, and every message arrives exactly once, in each sender's order.
Every wait is on a condition of the page (Playwright's ``expect``), never a sleep.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM, CHROMIUM_FLAGS, RelayServer
from playwright.sync_api import Page, expect

from tools.loopback import DEMO_HOST

BOOT_TIMEOUT_MS = 240_000  # Pyodide workers booting on a busy 2-core machine
STEP_TIMEOUT_MS = 90_000
BURST = 12  # messages per user; the relay dies after half of them

# Chromium's own console lines while the relay is down (failed fetches and WebSocket
# connections): expected then, and only then.
OUTAGE_NOISE = re.compile(r"ERR_CONNECTION_REFUSED|WebSocket connection to .* failed|Failed to load resource")


class User:
    """One user: a browser context (a profile) with the demo page open."""

    def __init__(self, browser: Any, relay: RelayServer, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.expect_outage = False
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self._console)
        self.page.goto(f"{relay.url}/web/")
        self.page.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not (self.expect_outage and OUTAGE_NOISE.search(message.text)):
            self.errors.append(message.text)

    def role(self, name: str) -> Any:
        return self.page.locator(f'[data-role="{name}"]')

    def onboard(self) -> None:
        expect(self.page.locator("body")).to_have_attribute("data-state", "onboarding")
        form = self.role("onboarding")
        form.locator('input[name="user"]').fill(self.name)
        form.locator('button[type="submit"]').click()
        expect(self.page.locator("body")).to_have_attribute("data-state", "new")
        self.expect_connected()

    def expect_connected(self) -> None:
        expect(self.role("connection")).to_have_attribute("data-state", "connected")
        expect(self.role("connection")).to_have_attribute("data-queued", "0")

    def send(self, text: str) -> None:
        box = self.role("compose").locator("input")
        box.fill(text)
        box.press("Enter")
        expect(box).to_have_value("")  # taken by the page; stored (and maybe queued) by the worker

    def texts(self) -> list[str]:
        return self.role("messages").locator(".message .text").all_inner_texts()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def users(browser: Any, relay_server: Callable[..., RelayServer], output_dir: Path,
          request: pytest.FixtureRequest) -> Iterator[Callable[[str], User]]:  # fmt: skip
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    relay = relay_server()
    made: list[User] = []

    def make(name: str) -> User:
        user = User(browser, relay, name)
        user.relay = relay  # type: ignore[attr-defined]
        made.append(user)
        return user

    yield make
    failed = getattr(request.node, "call_failed", False)
    for user in made:
        if failed:
            user.page.screenshot(path=str(output_dir / f"demo-failure-{user.name}.png"), full_page=True)
        errors = user.errors
        user.close()
        assert failed or not errors, f"errors on {user.name}'s page: {errors}"


def test_two_users_chat_through_a_relay_that_is_killed_mid_burst(users: Callable[[str], User],
                                                                  output_dir: Path) -> None:  # fmt: skip
    started = time.monotonic()
    alice, bob = users("alice"), users("bob")
    relay: RelayServer = alice.relay  # type: ignore[attr-defined]
    alice.onboard()
    bob.onboard()
    boot_s = time.monotonic() - started

    # alice creates a conversation and adds bob by his user name (his devices, from the relay).
    alice.role("create").locator("input").fill("lunch")
    alice.role("create").locator("button").click()
    expect(alice.role("conv-name")).to_have_text("lunch")
    expect(alice.role("epoch")).to_have_text("epoch 0")
    alice.role("add-user").locator("input").fill("bob")
    alice.role("add-user").locator("button").click()
    expect(alice.role("members")).to_contain_text("bob")
    expect(alice.role("epoch")).to_have_text("epoch 1")
    expect(bob.role("conv-name")).to_have_text("with alice")  # the Welcome, pushed by the relay
    expect(bob.role("epoch")).to_have_text("epoch 1")

    alice.send("Lunch at noon? Café Müller.")
    expect(bob.role("messages")).to_contain_text("Lunch at noon? Café Müller.")
    bob.send("Yes! The usual place.")
    expect(alice.role("messages")).to_contain_text("Yes! The usual place.")

    # A burst from both; halfway through, the relay dies (SIGKILL) and the rest is sent
    # while it is down: it waits in the outboxes. Then the relay comes back on the same
    # database and port.
    half = BURST // 2
    a_texts = [f"alice {i:02d}" for i in range(BURST)]
    b_texts = [f"bob {i:02d}" for i in range(BURST)]
    for i in range(half):
        alice.send(a_texts[i])
        bob.send(b_texts[i])
    alice.expect_outage = bob.expect_outage = True
    relay.kill()
    killed = time.monotonic()
    for i in range(half, BURST):
        alice.send(a_texts[i])
        bob.send(b_texts[i])
    for user in (alice, bob):  # the devices noticed: what they sent since waits in their outboxes
        expect(user.role("connection")).not_to_have_attribute("data-state", "connected")
        expect(user.role("connection")).not_to_have_attribute("data-queued", "0")
        expect(user.role("connection-text")).to_contain_text("queued")
    alice.page.screenshot(path=str(output_dir / "demo-offline.png"), full_page=True)
    relay.start()
    restarted = time.monotonic()
    for user in (alice, bob):
        user.expect_connected()
    reconnect_s = time.monotonic() - restarted

    # Every message, exactly once, in each sender's order, on both devices.
    expected_count = 2 + 2 * BURST
    for user in (alice, bob):
        expect(user.role("messages").locator(".message")).to_have_count(expected_count)
        texts = user.texts()
        assert sorted(texts) == sorted(["Lunch at noon? Café Müller.", "Yes! The usual place.", *a_texts, *b_texts])
        assert [t for t in texts if t.startswith("alice ")] == a_texts, user.name
        assert [t for t in texts if t.startswith("bob ")] == b_texts, user.name
        expect(user.role("error")).to_have_text("")  # every send was acknowledged
    delivered_s = time.monotonic() - restarted
    alice.expect_outage = bob.expect_outage = False
    alice.page.screenshot(path=str(output_dir / "demo.png"), full_page=True)

    # A reload restores the history from the device's database, and the device reads the
    # relay's log on from where it stopped.
    bob.page.reload()
    bob.page.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)
    expect(bob.page.locator("body")).to_have_attribute("data-state", "restored")
    bob.expect_connected()
    expect(bob.role("messages").locator(".message")).to_have_count(expected_count)
    assert bob.texts() == alice.texts()
    bob.send("Still here after the reload.")
    expect(alice.role("messages")).to_contain_text("Still here after the reload.")
    print(
        f"boot {boot_s:.1f} s; relay down {restarted - killed:.1f} s; reconnected {reconnect_s:.1f} s "
        f"and everything delivered {delivered_s:.1f} s after the restart"
    )


def test_second_tab_and_removal(users: Callable[[str], User]) -> None:
    alice, bob = users("alice"), users("bob")
    alice.onboard()
    bob.onboard()
    alice.role("create").locator("input").fill("plans")
    alice.role("create").locator("button").click()
    alice.role("add-user").locator("input").fill("bob")
    alice.role("add-user").locator("button").click()
    expect(bob.role("conv-name")).to_have_text("with alice")

    # A second tab of bob's profile: the device's database is owned by the first one.
    second = bob.context.new_page()
    second.goto(bob.page.url)
    second.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)
    expect(second.locator("body")).to_have_attribute("data-state", "elsewhere")
    expect(second.locator("#banner")).to_contain_text("DatabaseInUse")
    second.close()

    # alice removes bob: a new epoch bob has no keys for, and the relay stops his log there.
    alice.role("members").locator("li", has_text="bob").locator("button.remove").click()
    expect(bob.role("members")).to_contain_text("this device was removed")
    expect(alice.role("epoch")).to_have_text("epoch 2")
    alice.send("Bob cannot read this one.")
    expect(alice.role("messages")).to_contain_text("Bob cannot read this one.")
    # bob pulls everything the relay has for him (the reply comes after the pull); the
    # message is not among it.
    outcome = bob.page.evaluate("window.pingDemo.worker.call('sync')")
    assert outcome["messages"] == []
    bob.page.evaluate("window.pingDemo.refresh()")
    assert "Bob cannot read this one." not in bob.texts()


def test_a_plain_http_origin_is_not_a_secure_context(browser: Any, relay_server: Callable[..., RelayServer]) -> None:
    """What a second machine sees: the demo opened by a plain-http name that is not
    ``localhost`` (as ``http://192.168.1.10:8000`` would be) is not a secure context, and the
    page says so; Chromium told to treat that origin as secure runs the demo (README.md, "Two
    machines"). The name is ``ping-demo.test``, which the test browsers map to 127.0.0.1
    (``tools/loopback.py``): every byte stays on loopback."""
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    relay = relay_server(public_host=DEMO_HOST)  # bound to 127.0.0.1, signing for http://ping-demo.test:PORT

    plain = browser.new_context()
    page = plain.new_page()
    page.goto(f"{relay.url}/web/")
    page.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)
    assert page.evaluate("window.isSecureContext") is False
    expect(page.locator("body")).to_have_attribute("data-state", "insecure")
    expect(page.locator("#banner")).to_contain_text("unsafely-treat-insecure-origin-as-secure")
    plain.close()

    flags = [*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={relay.url}"]
    trusting = browser.browser_type.launch(executable_path=CHROMIUM, args=flags, headless=True)
    try:
        page = trusting.new_page()
        page.goto(f"{relay.url}/web/")
        page.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)
        assert page.evaluate("window.isSecureContext") is True
        form = page.locator('[data-role="onboarding"]')
        form.locator('input[name="user"]').fill("carol")
        form.locator('button[type="submit"]').click()
        # The device is open (its info set) once the body says "new"; the connection can
        # report "connected" before open_device has returned.
        expect(page.locator("body")).to_have_attribute("data-state", "new")
        expect(page.locator('[data-role="connection"]')).to_have_attribute("data-state", "connected")
        assert page.evaluate("window.pingDemo.state().info.relay") == relay.url
    finally:
        trusting.close()


def test_link_a_second_profile_and_compare_safety_numbers(users: Callable[[str], User], output_dir: Path) -> None:
    """ann links a second browser profile with a code shown on her first; bob, who verified
    ann's safety number, sees a warning line when her devices change; a third profile that
    claims the name "ann" without a code is refused."""
    ann, bob = users("ann"), users("bob")
    ann.onboard()
    bob.onboard()
    ann.role("create").locator("input").fill("plans")
    ann.role("create").locator("button").click()
    ann.role("add-user").locator("input").fill("bob")
    ann.role("add-user").locator("button").click()
    expect(bob.role("conv-name")).to_have_text("with ann")

    # Safety numbers: the same digits on both sides; bob marks ann verified.
    for user in (ann, bob):
        expect(user.role("safety-digits")).to_have_count(1)
    digits = ann.role("safety-digits").text_content()
    assert digits and len(digits.replace(" ", "")) == 60
    assert bob.role("safety-digits").text_content() == digits
    bob.page.locator("summary", has_text="Safety numbers").click()
    bob.role("safety-list").locator("button", has_text="Mark as verified").click()
    expect(bob.role("safety-list").locator("li")).to_have_attribute("data-verified", "true")
    expect(bob.role("members")).to_contain_text("ann ✓")

    # ann shows a code; a second profile enters it with her name; ann approves.
    ann.role("link-start").click()
    expect(ann.role("link-panel")).to_have_attribute("data-state", "code")
    code = ann.role("link-code").text_content() or ""
    assert len(code) == 19
    laptop = users("ann")
    expect(laptop.page.locator("body")).to_have_attribute("data-state", "onboarding")
    form = laptop.role("onboarding")
    form.locator('input[name="user"]').fill("ann")
    form.locator('input[name="code"]').fill(code)
    form.locator('button[type="submit"]').click()
    expect(ann.role("link-panel")).to_have_attribute("data-state", "request")
    ann.role("link-approve").click()
    expect(ann.role("link-panel")).to_have_attribute("data-state", "done")
    expect(laptop.page.locator("body")).to_have_attribute("data-state", "linked")
    expect(laptop.role("conv-name")).to_have_text("with ann, bob")  # added to ann's conversation (names stay local)
    assert laptop.role("safety-digits").text_content() == digits  # the same identity

    # bob: a warning line in the conversation, since he had verified ann.
    expect(bob.role("messages").locator('[data-role="system-line"]')).to_contain_text("ann's devices changed")
    expect(bob.role("messages").locator('[data-role="system-line"]')).to_contain_text("You had verified ann")
    laptop.send("from ann's laptop")
    expect(bob.role("messages")).to_contain_text("from ann's laptop")
    bob.page.screenshot(path=str(output_dir / "demo-linked.png"), full_page=True)

    # A third profile that picks "ann" without a code: refused, and nothing half-made stays.
    mallory = users("ann")
    expect(mallory.page.locator("body")).to_have_attribute("data-state", "onboarding")
    mallory.role("onboarding").locator('input[name="user"]').fill("ann")
    mallory.role("onboarding").locator('button[type="submit"]').click()
    expect(mallory.page.locator("body")).to_have_attribute("data-state", "name-taken")
    expect(mallory.role("onboarding-error")).to_contain_text('The name "ann" is taken')
    expect(bob.role("members")).not_to_contain_text("mallory")
