"""End to end through the demo page (web/index.html) in headless Chromium, through its UI only.

Three devices (alice's laptop and phone, bob's laptop), each a module worker with its own
Pyodide, ping_web, real OpenMLS wasm and encrypted IndexedDB; the delivery service in a
fourth worker. The test creates a conversation, adds bob, links alice's phone, has every
device send and checks every device shows every decrypted message; reloads the page and
finds the history on all three; checks a second tab is told the devices are open
elsewhere; then removes bob and checks he can no longer read. Screenshots: test-output/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

BOOT_TIMEOUT_MS = 240_000  # four Pyodide workers booting at once on a busy 2-core machine
STEP_TIMEOUT_MS = 90_000

MESSAGES = [
    ("alice-laptop", "Lunch at noon? Café Müller."),
    ("bob", "Yes! The usual place."),
    ("alice-phone", "On my way, from my phone."),
]


def open_demo(page: Page, base_url: str) -> float:
    started = time.monotonic()
    page.goto(f"{base_url}/web/")
    page.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)
    return time.monotonic() - started


def card(page: Page, key: str) -> Locator:
    return page.locator(f'[data-device="{key}"]')


def send(page: Page, key: str, text: str) -> None:
    box = card(page, key).locator("[data-role=compose] input")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")  # cleared once the worker stored and posted it


def message_texts(page: Page, key: str) -> list[str]:
    return card(page, key).locator("[data-role=messages] .message .text").all_inner_texts()


@pytest.fixture
def page(context: Any, output_dir: Path, request: pytest.FixtureRequest) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    yield page
    if getattr(request.node, "call_failed", False):
        page.screenshot(path=str(output_dir / "demo-failure.png"), full_page=True)
    assert not errors, f"errors on the page: {errors}"


def test_three_devices_exchange_messages_and_survive_a_reload(page: Page, context: Any, base_url: str,
                                                              output_dir: Path) -> None:  # fmt: skip
    boot_s = open_demo(page, base_url)
    alice, phone, bob = card(page, "alice-laptop"), card(page, "alice-phone"), card(page, "bob")
    for device in (alice, phone, bob):
        expect(device.locator("[data-role=status]")).to_have_text("new device")
    expect(page.locator("#ds-status")).to_have_attribute("data-state", "ok")

    # alice creates a conversation and adds bob (Commit + Welcome through the delivery worker).
    alice.locator("[data-role=create] input").fill("lunch")
    alice.locator("[data-role=create] button").click()
    expect(alice.locator("[data-role=conv-name]")).to_have_text("lunch")
    expect(alice.locator("[data-role=epoch]")).to_have_text("epoch 0")
    alice.locator("[data-role=add] select").select_option(label="bob · laptop")
    alice.locator("[data-role=add] button").click()
    expect(alice.locator("[data-role=members]")).to_contain_text("bob · laptop")
    expect(bob.locator("[data-role=conv-name]")).to_have_text("lunch")
    expect(bob.locator("[data-role=epoch]")).to_have_text("epoch 1")

    # alice links her phone: it joins her device group and, as a new member, the conversation.
    alice.locator("[data-role=link] select").select_option(label="alice · phone")
    alice.locator("[data-role=link] button").click()
    expect(phone.locator("[data-role=conv-name]")).to_have_text("lunch")
    for device in (alice, phone, bob):
        expect(device.locator("[data-role=epoch]")).to_have_text("epoch 2")
        members = device.locator("[data-role=members]")
        for label in ("alice · laptop", "alice · phone", "bob · laptop"):
            expect(members).to_contain_text(label)

    # Every device sends; every device shows every message, decrypted.
    for sender, text in MESSAGES:
        send(page, sender, text)
        for device in (alice, phone, bob):
            expect(device.locator("[data-role=messages]")).to_contain_text(text)
    expected = [text for _, text in MESSAGES]
    for key in ("alice-laptop", "alice-phone", "bob"):
        assert message_texts(page, key) == expected, key
    # Each card marks its own message as its own and names the other senders.
    expect(bob.locator(".message.own .text")).to_have_text(["Yes! The usual place."])
    expect(bob.locator(".message", has_text="On my way").locator(".from")).to_contain_text("alice · phone")
    page.screenshot(path=str(output_dir / "demo-before-reload.png"), full_page=True)

    # Reload: every device comes back from its encrypted IndexedDB database with its history.
    started = time.monotonic()
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)
    reload_s = time.monotonic() - started
    for key, device in (("alice-laptop", alice), ("alice-phone", phone), ("bob", bob)):
        expect(device.locator("[data-role=status]")).to_have_text("restored")
        expect(device.locator("[data-role=conv-name]")).to_have_text("lunch")
        expect(device.locator("[data-role=messages] .message")).to_have_count(len(expected))
        assert message_texts(page, key) == expected, key
    expect(page.locator("#ds-status")).to_contain_text("journal entries restored")

    # The conversation goes on after the reload (the delivery service was restored too).
    send(page, "bob", "Still here after the reload.")
    for device in (alice, phone):
        expect(device.locator("[data-role=messages]")).to_contain_text("Still here after the reload.")
    page.screenshot(path=str(output_dir / "demo.png"), full_page=True)

    # A second tab: every database is owned by the first one.
    second = context.new_page()
    second.goto(f"{base_url}/web/")
    second.wait_for_selector("body[data-ready=true]", timeout=BOOT_TIMEOUT_MS)
    for key in ("alice-laptop", "alice-phone", "bob"):
        expect(card(second, key).locator("[data-role=status]")).to_have_text("open elsewhere")
        expect(card(second, key).locator("[data-role=elsewhere]")).to_contain_text("DatabaseInUse")
    expect(second.locator("#banner")).to_contain_text("already open in another tab")
    second.screenshot(path=str(output_dir / "demo-second-tab.png"), full_page=True)
    second.close()

    # alice removes bob: a new epoch bob has no keys for.
    page.bring_to_front()
    alice.locator("[data-role=members] li", has_text="bob · laptop").locator("button.remove").click()
    expect(bob.locator("[data-role=members]")).to_contain_text("this device was removed")
    for device in (alice, phone):
        expect(device.locator("[data-role=epoch]")).to_have_text("epoch 3")
        expect(device.locator("[data-role=members]")).not_to_contain_text("bob · laptop")
    send(page, "alice-laptop", "Bob cannot read this one.")
    expect(phone.locator("[data-role=messages]")).to_contain_text("Bob cannot read this one.")
    page.wait_for_timeout(1000)  # give a (wrong) delivery to bob time to show up
    assert "Bob cannot read this one." not in message_texts(page, "bob")
    page.screenshot(path=str(output_dir / "demo-removed.png"), full_page=True)
    print(f"boot {boot_s:.1f} s, reload {reload_s:.1f} s")
