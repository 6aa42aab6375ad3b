"""The phone page end to end, in real headless Chromium against the real API, bus and dispatcher.

Pair a phone with the code ``symbiote keys pair`` prints, see a ``shell.run`` request appear
within a second of its approval request, approve it on the page (the page builds and signs
the approval with its WebCrypto key) and watch it succeed; reject another; and check that a
page whose server lies about what is being approved refuses to sign. Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import typer
from typer.testing import CliRunner

from symbiote.api import ApiServer, PendingApproval
from symbiote.api.wire import b64decode, b64encode, jsonable
from symbiote.bootstrap import initialize
from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.bus.ids import now_ms
from symbiote.bus.stream import Bus
from symbiote.cli.pairing import register as register_pair
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.home import DataDir
from symbiote.signers.keys import sign_event
from tests.helpers import SPOKEN_REQUEST, speak

playwright_async = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.timeout(90)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@dataclass
class Stack:
    bus: Bus
    home: DataDir
    api: ApiServer


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `make test` installs it (apt-get install -y chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


@pytest_asyncio.fixture
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    async with playwright_async.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            context = await chromium.new_context(
                ignore_https_errors=True,
                viewport={"width": 412, "height": 915},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
            )
            yield context
        finally:
            await chromium.close()


@pytest_asyncio.fixture
async def system(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[Bus, DataDir]]:
    """A real bus with an initialized data dir and a running dispatcher."""
    bus = await Bus.connect(nats_url, name="test-phone")
    home = DataDir(tmp_path / "home")
    await initialize(bus, home, name="me")
    try:
        async with Dispatcher(bus, home.load_key("runtime"), Executors(tmp_path / "ws")):
            yield bus, home
    finally:
        await bus.close()


def pairing_link(home: DataDir, api: ApiServer, name: str) -> str:
    """Run ``symbiote keys pair --name NAME`` and take the URL it prints."""
    keys_app = typer.Typer()
    register_pair(keys_app)
    keys_app.command("noop")(lambda: None)
    result = CliRunner().invoke(
        keys_app, ["pair", "--name", name, "--data-dir", str(home.root), "--url", api.url, "--no-wait", "--no-qr"]
    )
    assert result.exit_code == 0, result.output
    return next(word for word in result.output.split() if word.startswith("https://"))


async def pair(context: Any, home: DataDir, api: ApiServer, name: str, shot: str | None = None) -> Any:
    page = await context.new_page()
    page.on("console", lambda msg: print("page:", msg.type, msg.text))
    await page.goto(pairing_link(home, api, name))
    await page.locator("#pair-view").wait_for(state="visible")
    assert await page.locator("#pair-fp").text_content() == api.fingerprint
    if shot:
        await page.screenshot(path=ARTIFACTS / shot, full_page=True)
    await page.locator("#pair-button").click()
    await page.locator("#main-view").wait_for(state="visible", timeout=10_000)
    assert await page.locator("#me-principal").text_content() == f"user:{name}"
    await page.locator("#conn.live").wait_for(timeout=30_000)
    return page


async def propose(bus: Bus, home: DataDir, argv: list[str], *, text: str | None = None) -> Envelope:
    corr = None
    if text is not None:
        user = home.load_key("user")
        request = sign_event(make_event("input.text", user.principal, {"text": text}), user)
        await bus.publish(request)
        corr = request.id
    agent = home.load_key("agent")
    body = {"command": "shell.run", "args": {"argv": argv}, "confidence": 0.93, "expires_at": now_ms() + 60_000}
    event = sign_event(make_event("command.proposed", agent.principal, body, corr=corr), agent)
    await bus.publish(event)
    return event


async def events_of(bus: Bus, command_id: str) -> list[Envelope]:
    return [from_wire(m.data) for m in await bus.history(f"sym.cmd.{command_id}.>", 1)]


async def wait_type(bus: Bus, command_id: str, kind: str, timeout: float = 10.0) -> Envelope:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in await events_of(bus, command_id):
            if event.type == kind:
                return event
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind}; saw {[e.type for e in await events_of(bus, command_id)]}")


async def test_pair_approve_and_reject_on_the_phone(browser: Any, system: tuple[Bus, DataDir]) -> None:
    bus, home = system
    async with ApiServer(bus, home, "127.0.0.1", 0) as api:
        page = await pair(browser, home, api, "alice", shot="phone-01-pair.png")
        phone_keys = api.board.state.keyring.by_principal("user:alice")
        assert len(phone_keys) == 1 and phone_keys[0].role == "user"
        phone_kid = phone_keys[0].kid

        # a shell.run request shows up within a second of its approval request
        proposal = await propose(bus, home, ["echo", "hi"], text="run echo hi")
        card = page.locator(f'article.card[data-command-id="{proposal.id}"]')
        await card.wait_for(state="visible", timeout=30_000)
        shown_at = now_ms()
        requested = await wait_type(bus, proposal.id, "command.approval_requested")
        assert shown_at - requested.at < 1000, f"card shown {shown_at - requested.at} ms after the request"
        await card.locator(".verify.ok").wait_for(timeout=30_000)
        assert (await card.locator(".args").text_content()) == "$ echo hi"
        assert (await card.locator(".cmd").text_content()) == "shell.run"
        assert "High risk" in (await card.locator(".risk").text_content() or "")
        assert "no network access" in (await card.locator(".sandbox").text_content() or "")
        assert "run echo hi" in (await card.locator(".asked").text_content() or "")
        await page.screenshot(path=ARTIFACTS / "phone-02-pending.png", full_page=True)

        # approve on the page: the page signs, the API verifies and appends, the dispatcher runs it
        await card.locator("button.approve").click()
        succeeded = await wait_type(bus, proposal.id, "command.succeeded")
        assert succeeded.body["output"]["stdout"] == "hi\n"
        approved = next(e for e in await events_of(bus, proposal.id) if e.type == "command.approved")
        assert approved.actor == "user:alice"
        assert [s.kid for s in approved.sigs] == [phone_kid]
        assert approved.body["digest"] == proposal.digest()
        assert approved.cause == proposal.id and approved.corr == proposal.corr
        await card.wait_for(state="detached", timeout=30_000)
        await page.locator(f'#recent li.state-succeeded[data-command-id="{proposal.id}"]').wait_for(timeout=30_000)
        await page.screenshot(path=ARTIFACTS / "phone-03-approved.png", full_page=True)

        # reject another
        second = await propose(bus, home, ["touch", "should-not-exist"], text="create a file")
        card2 = page.locator(f'article.card[data-command-id="{second.id}"]')
        await card2.locator(".verify.ok").wait_for(timeout=30_000)
        await card2.locator("button.reject").click()
        denied = await wait_type(bus, second.id, "command.denied")
        assert denied.body["reason"] == "rejected_by_user"
        assert denied.cause == second.id
        assert "command.started" not in [e.type for e in await events_of(bus, second.id)]
        await page.locator(f'#recent li.state-denied[data-command-id="{second.id}"]').wait_for(timeout=30_000)
        await page.screenshot(path=ARTIFACTS / "phone-04-rejected.png", full_page=True)

        # typed requests are signed by the phone too
        before = await bus.last_seq()
        await page.locator("details.ask summary").click()
        await page.locator("#ask-text").fill("what is the weather")
        await page.locator("#ask-form button[type=submit]").click()
        await page.locator("#ask-status", has_text="Sent").wait_for(timeout=30_000)
        typed = [from_wire(m.data) for m in await bus.history("sym.in.text", before + 1)]
        assert [(e.actor, e.body["text"], [s.kid for s in e.sigs]) for e in typed] == [
            ("user:alice", "what is the weather", [phone_kid])
        ]

        # the page keeps its key across reloads (IndexedDB) and still knows who it is
        await page.reload()
        await page.locator("#main-view").wait_for(state="visible")
        assert await page.locator("#me-principal").text_content() == "user:alice"
        assert await page.locator("#key-problem").is_hidden()
        await page.locator("#conn.live").wait_for(timeout=30_000)

        # the computer restarts: its read sessions are gone; the page signs in again by itself
        port = api.bound_port
        await api.stop()
        async with ApiServer(bus, home, "127.0.0.1", port) as again:
            third = await propose(bus, home, ["echo", "after", "restart"], text="again")
            card3 = page.locator(f'article.card[data-command-id="{third.id}"]')
            await card3.locator(".verify.ok").wait_for(timeout=15_000)
            await page.locator("#conn.live").wait_for(timeout=30_000)
            assert [s.principal for s in again.board.state.keyring.by_principal("user:alice")] == ["user:alice"]


def lie_about_args(pending: PendingApproval) -> PendingApproval:
    """A lying server: shows a harmless command but asks for a signature over the real one's digest."""
    proposal = from_wire(b64decode(pending.proposal_wire))
    forged = proposal.model_copy(update={"body": {**proposal.body, "args": {"argv": ["echo", "harmless"]}}})
    return pending.model_copy(
        update={"proposal_wire": b64encode(forged.to_wire()), "args": jsonable(forged.body["args"])}
    )


async def test_page_refuses_to_sign_when_the_server_lies(browser: Any, system: tuple[Bus, DataDir]) -> None:
    bus, home = system
    async with ApiServer(bus, home, "127.0.0.1", 0, present=lie_about_args) as api:
        page = await pair(browser, home, api, "bob")
        proposal = await propose(bus, home, ["rm", "-rf", "important"], text="clean up")
        card = page.locator(f'article.card[data-command-id="{proposal.id}"]')
        warning = card.locator(".verify.warning")
        await warning.wait_for(timeout=30_000)
        assert "does not match" in (await warning.text_content() or "")
        assert await card.locator("button.approve").is_disabled()
        assert await card.locator("button.reject").is_disabled()
        await page.screenshot(path=ARTIFACTS / "phone-05-tampered.png", full_page=True)
        await card.locator("button.approve").click(force=True)  # a disabled button does nothing
        await asyncio.sleep(0.5)
        types = [e.type for e in await events_of(bus, proposal.id)]
        assert types == ["command.proposed", "command.approval_requested"]


async def test_speak_a_request_on_the_phone(chromium_path: str, system: tuple[Bus, DataDir], tmp_path: Path) -> None:
    """The phone records (Chromium's fake microphone plays espeak-ng speech), the computer
    transcribes, the page shows the text, and the phone signs it as an input.voice that runs."""
    speech = speak(SPOKEN_REQUEST, tmp_path / "speech.wav")
    bus, home = system
    microphone = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}%noloop",
    ]
    async with (
        playwright_async.async_playwright() as pw,
        ApiServer(bus, home, "127.0.0.1", 0) as api,
    ):
        chromium = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS + microphone)
        try:
            context = await chromium.new_context(ignore_https_errors=True, permissions=["microphone"])
            page = await pair(context, home, api, "carol")
            phone_kid = api.board.state.keyring.by_principal("user:carol")[0].kid
            await page.locator("details.ask summary").click()
            await page.evaluate(
                """() => {  // count the microphone captures the page starts
                  const media = navigator.mediaDevices, open = media.getUserMedia.bind(media);
                  window.captures = 0;
                  media.getUserMedia = (c) => { window.captures += 1; return open(c); };
                }"""
            )
            await page.locator("#speak-button").dblclick()  # a double tap starts one recording
            await page.locator("#speak-button.recording").wait_for(timeout=30_000)
            assert await page.evaluate("window.captures") == 1
            await asyncio.sleep(5.0)  # the recording: the speech is about 3.5 s long
            await page.locator("#speak-button").click()
            await page.locator("#ask-status", has_text="Heard this").wait_for(timeout=20_000)
            heard = await page.locator("#ask-text").input_value()
            assert "good morning" in heard.lower(), heard
            await page.screenshot(path=ARTIFACTS / "phone-06-heard.png", full_page=True)
            assert "tiny.en" in (await page.locator("#ask-status").text_content() or "")
            before = await bus.last_seq()
            # corrected before sending: typed text, not a transcript
            await page.locator("#ask-text").fill(heard + " please")
            await send(page)
            # sent as heard: the transcript, signed by the phone
            await page.locator("#ask-text").fill(heard)
            await send(page)
            await page.locator("#ask-text").fill(heard)  # the transcript counts once
            await send(page)
            sent = [(m.subject, from_wire(m.data)) for m in await bus.history("sym.in.>", before + 1)]
            assert [(subject, e.actor, e.body["text"], [s.kid for s in e.sigs]) for subject, e in sent] == [
                ("sym.in.text", "user:carol", heard + " please", [phone_kid]),
                ("sym.in.voice", "user:carol", heard, [phone_kid]),
                ("sym.in.text", "user:carol", heard, [phone_kid]),
            ]
            assert sent[1][1].body["model"] == "tiny.en" and sent[1][1].body["audio_ms"] > 1000
        finally:
            await chromium.close()


async def send(page: Any) -> None:
    """Press Send and wait until the page has sent it (it then empties the text)."""
    await page.locator("#ask-form button[type=submit]").click()
    await playwright_async.expect(page.locator("#ask-text")).to_have_value("", timeout=30_000)
