"""Audit, why and signed checkpoints, against a real nats-server (and PostgreSQL where stated).

Each tamper test damages a real stream the way an attacker with access to NATS could, and
checks that the audit names the first bad sequence and why.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import typer
from typer.testing import CliRunner

from symbiote.bootstrap import initialize, register_key, revoke_key
from symbiote.bus.envelope import Envelope, make_event, peek_id
from symbiote.bus.ids import derived_event_id, new_event_id, now_ms
from symbiote.bus.stream import Bus, subject_text
from symbiote.cli import history
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.home import DataDir
from symbiote.projections import (
    CHECKPOINT_SUBJECT,
    AuditReport,
    Checkpointer,
    CheckpointRecord,
    Projections,
    audit,
    compute_root,
    entry_hash,
    human_time,
    why,
    write_html,
)
from symbiote.projections.db import connect
from symbiote.signers.keys import SigningKey, sign_event
from tests.helpers import Actors, actors_on, publish_raw_subject

pytestmark = pytest.mark.timeout(120)


class World(Actors):
    """:class:`Actors` with a checkpointer signing as the runtime."""

    def checkpointer(self, **kw: Any) -> Checkpointer:
        return Checkpointer(self.bus, self.runtime, self.home.checkpoints_dir, **kw)


@pytest_asyncio.fixture
async def world(nats_url: str, tmp_path: Path) -> AsyncIterator[World]:
    async with actors_on(nats_url, tmp_path / "home", World) as found:
        yield found


async def session(w: World, tmp_path: Path) -> dict[str, Envelope]:
    """A real dispatcher decides: an echo, a shell.run approved by the user, a denied proposal."""
    made: dict[str, Envelope] = {}
    async with Dispatcher(w.bus, w.runtime, Executors(tmp_path / "ws")) as dispatcher:
        echo_in = w.text("echo hello")
        made["echo"] = w.proposal(echo_in, "echo", {"text": "hello"})
        shell_in = w.text("run uname")
        made["shell"] = w.proposal(shell_in, "shell.run", {"argv": ["uname"]})
        bad_in = w.text("echo a number")
        made["bad"] = w.proposal(bad_in, "echo", {"text": 5})
        for event in (echo_in, made["echo"], shell_in, made["shell"], bad_in, made["bad"]):
            await w.send(event)
        await _until(lambda: dispatcher.counts["approval_requested"] >= 1)
        await w.send(w.approval(made["shell"]))
        await _until(lambda: sum(dispatcher.counts[k] for k in ("command.succeeded", "command.failed")) >= 2)
        await _until(lambda: dispatcher.counts["denied.invalid_args"] >= 1)
    return made


async def _until(check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def kinds(report: AuditReport) -> set[str]:
    return {f.kind for f in report.failures}


# -- a clean log -------------------------------------------------------------------------------
async def test_a_clean_log_with_checkpoints_passes(world: World, tmp_path: Path) -> None:
    w = world
    made = await session(w, tmp_path)
    checkpointer = w.checkpointer()
    first = await checkpointer.checkpoint_now()
    assert first is not None and first.first_seq == 1 and first.prev is None
    assert await checkpointer.checkpoint_now() is None  # nothing new: checkpoints never cover themselves
    await w.send(w.text("one more thing"))
    second = await checkpointer.checkpoint_now()
    assert second is not None and second.prev == first.root and second.first_seq == first.last_seq + 1
    assert second.count == 1  # the first checkpoint event is not covered
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert report.ok, report.findings
    assert report.findings == []
    assert report.checkpoints == 2 and report.checkpoint_files == 2
    assert report.covered_through == second.last_seq == report.stream_last_seq - 1
    assert report.commands_executed == 2
    assert report.summary().startswith("OK")
    # for people: who asked for what ran and for what was refused, and when
    asked = {(e.command, e.asked_by, e.request) for e in report.executions}
    assert asked == {("echo", "user:ann", "echo hello"), ("shell.run", "user:ann", "run uname")}
    assert all(e.at is not None for e in report.executions)
    [refusal] = report.refusals
    assert (refusal.command_id, refusal.reason, refusal.asked_by) == (made["bad"].id, "invalid_args", "user:ann")
    assert refusal.request == "echo a number" and refusal.at is not None
    write_html(report, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "Asked by" in page and "“run uname”" in page and "90 % sure" in page
    assert "What was refused or rejected" in page and "its details were not valid" in page

    # the root is exactly the documented chain over the covered messages
    msgs = [m async for m in w.bus.read()]
    covered = [m for m in msgs if m.subject != CHECKPOINT_SUBJECT and m.seq <= first.last_seq]
    assert first.root == compute_root(None, [entry_hash(m.seq, m.subject, m.data) for m in covered])
    assert first.count == len(covered)

    story = await why(w.bus, made["shell"].id)
    assert story.found and story.command == "shell.run" and story.problems == []
    assert [s.kind for s in story.steps] == [
        "input",
        "proposal",
        "approval_request",
        "approval",
        "execution",
        "result",
    ]
    assert story.steps[0].text == "user:ann asked: 'run uname'"
    assert story.steps[3].who == "user:ann" and story.steps[3].ok
    assert "confidence 0.9" in story.steps[1].text and story.steps[1].who == "agent:main"
    bad = await why(w.bus, made["bad"].id)
    assert bad.state == "denied" and bad.steps[-1].kind == "denial" and "invalid_args" in bad.steps[-1].text
    assert not (await why(w.bus, "01234567-89ab-7def-8123-456789abcdef")).found


async def test_a_subject_that_is_not_utf8_is_checkpointed_and_audited(world: World, tmp_path: Path) -> None:
    """Any client can store bytes that are not UTF-8 as a subject: every reader goes past it, the
    checkpoints cover it (hashed as read, with ``\\xNN`` escapes, marked as not UTF-8, so that it
    can be told from a subject holding those characters) and the audit and its report hold."""
    w = world
    await w.send(w.text("before"))
    await publish_raw_subject(w.bus, b"sym.in.caf\xe9", w.text("after a bad subject").to_wire())
    await w.send(w.text("after"))
    checkpoint = await w.checkpointer().checkpoint_now()
    assert checkpoint is not None and checkpoint.last_seq == await w.bus.last_seq() - 1
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert report.ok, report.findings
    write_html(report, tmp_path / "report.html")
    literal = await publish_raw_subject(w.bus, b"sym.in.caf\\xe9", w.text("a backslash, x, e and 9").to_wire())
    msgs = {m.seq: m.subject async for m in w.bus.read()}
    bad = next(seq for seq, subject in msgs.items() if subject.startswith("sym.in.caf"))
    assert (msgs[bad], msgs[literal]) == ("sym.in.caf\\xe9 (not UTF-8)", "sym.in.caf\\xe9")
    direct = await w.bus.get(bad)
    assert direct is not None and direct.subject == msgs[bad]  # a direct get reads it the same
    assert subject_text(b"a\\\xff") != subject_text(b"a\\xff\xff")  # backslashes are escaped too


# -- tampering -----------------------------------------------------------------------------------
async def test_a_deleted_message_is_named(world: World, tmp_path: Path) -> None:
    w = world
    await session(w, tmp_path)
    await w.checkpointer().checkpoint_now()
    victim = 9
    await w.bus.js.delete_msg(w.bus.stream, victim)
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert not report.ok
    first = report.first_failure
    assert first is not None and first.seq == victim and first.kind == "gap"
    assert "deleted" in first.message
    assert "checkpoint" in kinds(report)  # the signed count no longer matches
    assert report.summary().startswith(f"FAILED at seq {victim}")


async def test_why_says_when_the_request_a_command_answers_is_gone(world: World, tmp_path: Path) -> None:
    w = world
    made = await session(w, tmp_path)
    request = next(m for m in [m async for m in w.bus.read("sym.in.>")] if peek_id(m.data) == made["shell"].cause)
    await w.bus.js.delete_msg(w.bus.stream, request.seq)
    story = await why(w.bus, made["shell"].id)
    first = story.steps[0]
    assert first.kind == "input" and not first.ok and "is not in the log" in first.text
    assert made["shell"].cause is not None and made["shell"].cause in first.text
    assert story.ran and not story.problems and story.as_map()["chain_ok"] is False
    assert "Steps marked ✗ do not hold: the chain cannot be proven there." in story.lines()
    # a command whose proposal is gone: its denial names the command as its cause, not a request
    proposed = next(m for m in [m async for m in w.bus.read("sym.cmd.>")] if peek_id(m.data) == made["bad"].id)
    await w.bus.js.delete_msg(w.bus.stream, proposed.seq)
    orphan = await why(w.bus, made["bad"].id)
    assert orphan.found and [s.kind for s in orphan.steps][-1] == "denial", orphan.steps
    gaps = [s.details["deleted"] for s in orphan.steps if s.kind == "gap"]
    assert any(a <= proposed.seq <= b for a, b in gaps), orphan.steps  # where its proposal was
    question = w.text("open the file")  # a question back, as the agent asks one: its own id, caused by the request
    asked_back = w.sign(
        w.agent, "command.clarify", {"command_id": new_event_id(), "question": "which file?"}, cause=question.id
    )
    await w.send(question)
    await w.send(asked_back)
    later = await w.send(w.text("something later"))
    await w.bus.js.delete_msg(w.bus.stream, later)
    story = await why(w.bus, asked_back.body["command_id"])
    assert [s.kind for s in story.steps] == ["input", "question"], story.steps  # nothing can follow a question
    request = w.text("echo by request")  # the id `say` prints: what became of it
    body = {"command": "echo", "args": {"text": "by request"}, "confidence": 0.9, "expires_at": now_ms() + 60_000}
    made_of_it = make_event(
        "command.proposed", w.agent.principal, body, cause=request.id, event_id=derived_event_id(request.id, "proposal")
    )
    await w.send(request)
    await w.send(sign_event(made_of_it, w.agent))
    by_request = await why(w.bus, request.id)
    assert by_request.found and by_request.command_id == made_of_it.id and by_request.request_id == request.id
    assert by_request.steps[0].kind == "input" and "echo by request" in by_request.steps[0].text
    assert "open the file" in story.steps[0].text and "which file?" in story.steps[1].text


async def test_an_event_signed_with_an_unregistered_key_is_named(world: World, tmp_path: Path) -> None:
    w = world
    await w.send(w.text("hello"))
    mallory = SigningKey.generate("user:ann")  # claims to be ann, with a key nobody registered
    seq = await w.send(w.text("transfer all my money", mallory))
    await w.send(w.text("goodbye"))
    await w.checkpointer().checkpoint_now()
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    first = report.first_failure
    assert first is not None and first.seq == seq and first.kind == "signature"
    assert "claiming to be from user:ann is signed with a key that was not registered" in first.message
    assert len(report.failures) == 1


async def test_a_truncated_tail_is_named(world: World, tmp_path: Path) -> None:
    w = world
    await session(w, tmp_path)
    checkpoint = await w.checkpointer().checkpoint_now()
    assert checkpoint is not None
    last = await w.bus.last_seq()
    cut_from = checkpoint.last_seq - 2
    for seq in range(cut_from, last + 1):
        await w.bus.js.delete_msg(w.bus.stream, seq)
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    first = report.first_failure
    assert first is not None and first.seq == cut_from
    assert {"gap", "truncated", "missing_checkpoint"} <= kinds(report)
    truncated = next(f for f in report.failures if f.kind == "truncated")
    assert f"ends at seq {cut_from - 1}" in truncated.message


async def test_a_purged_beginning_is_named(world: World, tmp_path: Path) -> None:
    w = world
    await session(w, tmp_path)
    await w.checkpointer().checkpoint_now()
    await w.bus.js.purge_stream(w.bus.stream, keep=5)
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    first = report.first_failure
    assert first is not None and first.seq == 1 and first.kind == "gap"
    assert "beginning of the log is missing" in first.message


async def test_a_command_run_without_its_approval_is_named(world: World) -> None:
    w = world
    source = w.text("delete everything")
    await w.send(source)
    proposal = w.proposal(source, "shell.run", {"argv": ["rm", "-rf", "/"]})
    await w.send(proposal)
    started = await w.send(w.runtime_event("command.started", proposal, sandbox={"backend": "bwrap"}))
    output = {"stdout": "", "stderr": ""}
    await w.send(w.runtime_event("command.succeeded", proposal, exit_code=0, output=output, duration_ms=3))
    echo_in = w.text("echo fine")
    echo = w.proposal(echo_in, "echo", {"text": "fine"})
    for event in (echo_in, echo, w.runtime_event("command.started", echo, sandbox={"backend": "inprocess"})):
        await w.send(event)
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    first = report.first_failure
    assert first is not None and first.seq == started and first.kind == "policy"
    assert first.command_id == proposal.id
    assert "no approval was ever requested" in first.message
    assert [f.seq for f in report.failures] == [started]  # the echo needed no approval
    runs = {run.command_id: run for run in report.executions}
    assert (runs[proposal.id].allowed, runs[proposal.id].approved_by, runs[proposal.id].outcome) == (
        False,
        [],
        "succeeded",
    )
    assert runs[echo.id].allowed and runs[echo.id].outcome is None and runs[echo.id].command == "echo"
    story = await why(w.bus, proposal.id)
    assert story.problems and "no approval" in story.problems[0]


async def test_an_audit_keeping_one_command_in_memory_finds_the_same(world: World) -> None:
    """Commands interleave; the auditor keeps one history and reads the others back from NATS."""
    w = world
    sources = [w.text(f"echo {i}") for i in range(4)]
    echoes = [w.proposal(s, "echo", {"text": str(i)}) for i, s in enumerate(sources)]
    risky_in = w.text("remove it all")
    risky = w.proposal(risky_in, "shell.run", {"argv": ["rm", "-rf", "/"]})
    events = [*sources, risky_in, *echoes, risky]
    events += [w.runtime_event("command.started", p, sandbox={"backend": "inprocess"}) for p in echoes]
    events.append(w.runtime_event("command.started", risky, sandbox={"backend": "bwrap"}))  # no approval
    output = {"text": "x"}
    events += [w.runtime_event("command.succeeded", p, exit_code=0, output=output, duration_ms=1) for p in echoes]
    events.append(w.runtime_event("command.started", echoes[0], sandbox={"backend": "inprocess"}))  # again
    seqs = [await w.send(e) for e in events]
    full = await audit(w.bus, checkpoint_dir=None)
    tiny = await audit(w.bus, checkpoint_dir=None, cache_size=1, batch=3)
    assert [f.as_map() for f in tiny.findings] == [f.as_map() for f in full.findings]
    policy = [(f.seq, f.command_id) for f in full.failures if f.kind == "policy"]
    assert policy == [(seqs[-6], risky.id), (seqs[-1], echoes[0].id)], full.findings


async def test_a_command_run_on_an_approval_signed_after_the_expiry_is_named(world: World) -> None:
    w = world
    source = w.text("list the disk")
    proposal = w.proposal(source, "shell.run", {"argv": ["ls", "/"]})
    expires = now_ms() - 3_600_000
    request = {"digest": proposal.digest(), "needs": 1, "principals": [w.user.principal], "expires_at": expires}
    body = {"command_id": proposal.id, "digest": proposal.digest()}
    late = w.sign(w.user, "command.approved", body, corr=proposal.corr, at=expires + 1)
    for event in (source, proposal, w.runtime_event("command.approval_requested", proposal, **request)):
        await w.send(event)
    approved = await w.send(late)
    started = await w.send(w.runtime_event("command.started", proposal, sandbox={"backend": "bwrap"}))
    report = await audit(w.bus, checkpoint_dir=None)
    first = report.first_failure
    assert first is not None and (first.seq, first.kind) == (started, "policy"), report.summary()
    assert "only 0 valid approval(s)" in first.message
    story = await why(w.bus, proposal.id)
    step = next(s for s in story.steps if s.seq == approved)
    assert not step.ok and "did not count" in step.text


async def test_forged_deleted_and_edited_checkpoints_are_named(world: World, tmp_path: Path) -> None:
    w = world
    await w.send(w.text("first"))
    checkpointer = w.checkpointer()
    one = await checkpointer.checkpoint_now()
    await w.send(w.text("second"))
    two = await checkpointer.checkpoint_now()
    assert one is not None and two is not None
    # a checkpoint signed by a key that is not a registered runtime key
    forger = SigningKey.generate("runtime:main")
    body = {"first_seq": 1, "last_seq": 1, "root": bytes(32), "prev": None, "count": 1}
    forged = await w.send(w.sign(forger, "audit.checkpoint", body))
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert {(f.seq, f.kind) for f in report.failures} == {(forged, "signature"), (forged, "checkpoint")}
    assert any("forged" in f.message for f in report.failures)

    # the second checkpoint deleted from NATS (its file remains)
    await w.bus.js.delete_msg(w.bus.stream, two.seq)
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert (two.seq, "missing_checkpoint") in {(f.seq, f.kind) for f in report.failures}

    # the first checkpoint's file edited (another root in the file than in the signed event)
    path = w.home.checkpoints_dir / f"{one.seq:012d}.json"
    data = json.loads(path.read_text())
    data["root"] = "00" * 32
    path.write_text(json.dumps(data))
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert any(f.kind == "checkpoint_file" and "root differs" in f.message for f in report.failures)

    # the file's signed event replaced by a different one: the copies disagree
    other = await Checkpointer(w.bus, w.runtime, tmp_path / "elsewhere").checkpoint_now()
    assert other is not None
    record = CheckpointRecord.from_wire(one.seq, other.wire)[0]
    data = {**record.to_json(), "seq": one.seq}
    path.write_text(json.dumps(data))
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert (one.seq, "edited_checkpoint") in {(f.seq, f.kind) for f in report.failures}


async def test_uncovered_events_are_noted_while_recent_and_fail_once_old(world: World) -> None:
    w = world
    await w.checkpointer().checkpoint_now()
    seq = await w.send(w.text("not yet checkpointed"))
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert report.ok
    assert [(f.seq, f.kind, f.severity) for f in report.findings] == [(seq, "uncovered", "warn")]
    # older than the grace period, and still no checkpoint vouches for it
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir, uncovered_grace_s=0)
    assert [(f.seq, f.kind, f.severity) for f in report.findings] == [(seq, "uncovered", "fail")]
    assert report.first_failure is not None and "checkpointer" in report.first_failure.message


async def test_a_checkpoint_filed_while_the_audit_reads_is_no_alarm(world: World, monkeypatch: Any) -> None:
    """The runtime goes on while the audit runs: a checkpoint published (and filed) after the audit
    took the stream's state covers messages the audit does not read; that is not a cut-off tail."""
    w = world
    checkpointer = w.checkpointer()
    await w.send(w.text("before"))
    await checkpointer.checkpoint_now()
    state_of = w.bus.stream_state

    async def state_then_more() -> Any:
        state = await state_of()
        monkeypatch.undo()  # once: the checkpointer below asks for the state too
        await w.send(w.text("while the audit reads"))
        assert await checkpointer.checkpoint_now() is not None
        return state

    monkeypatch.setattr(w.bus, "stream_state", state_then_more)
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir)
    assert report.ok and report.findings == [], report.findings


async def test_damaged_checkpoint_files_are_findings(world: World) -> None:
    w = world
    await w.send(w.text("hello"))
    record = await w.checkpointer().checkpoint_now()
    assert record is not None
    folder = w.home.checkpoints_dir
    (folder / "000000000100.json").write_text('{"seq": 1e400, "wire": ""}')
    (folder / "000000000101.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "000000000102.json").write_text('["not", "a", "map"]')
    report = await audit(w.bus, checkpoint_dir=folder)
    damaged = sorted(f.message.split(" (")[0] for f in report.failures if f.kind == "checkpoint_file")
    assert damaged == ["000000000100.json", "000000000101.json", "000000000102.json"], report.findings
    assert report.checkpoints == 1 and report.checkpoint_files == 1


async def test_a_forged_request_body_does_not_break_why(world: World) -> None:
    w = world
    source = w.text("list")
    proposal = w.proposal(source, "shell.run", {"argv": ["ls"]})
    for event in (source, proposal):
        await w.send(event)
    forger = SigningKey.generate("runtime:main")
    body = {"command_id": proposal.id, "digest": proposal.digest(), "needs": 1, "principals": 5, "expires_at": 1}
    forged = await w.send(w.sign(forger, "command.approval_requested", body, cause=proposal.id))
    report = await audit(w.bus, checkpoint_dir=None)
    assert report.first_failure is not None and report.first_failure.seq == forged
    story = await why(w.bus, proposal.id)
    step = next(s for s in story.steps if s.seq == forged)
    assert not step.ok and "of 5" in step.text
    assert not story.ran and story.as_map()["allowed"] is None and story.lines()[-1] == "It never ran."


async def test_a_log_of_another_owner_is_named(world: World) -> None:
    w = world
    await w.send(w.text("hello"))
    mine = await audit(w.bus, checkpoint_dir=None, owner_kid=w.owner.kid)
    assert not [f for f in mine.findings if f.kind == "owner"]
    other = await audit(w.bus, checkpoint_dir=None, owner_kid=SigningKey.generate("owner:me").kid)
    first = other.first_failure
    assert first is not None and (first.seq, first.kind) == (1, "owner"), other.findings


async def test_this_installation_s_owner_registered_later_does_not_pass_the_owner_check(world: World) -> None:
    """Anyone can register someone else's public key: a replaced log that registers the victim's
    owner kid as a second owner is still a log begun by another owner."""
    w = world
    victim = SigningKey.generate("owner:me")
    await register_key(w.bus, w.owner, victim.kid, "owner:me")
    report = await audit(w.bus, checkpoint_dir=None, owner_kid=victim.kid)
    first = report.first_failure
    assert first is not None and (first.seq, first.kind) == (1, "owner")
    assert "registered later in the log" in first.message


async def test_notes_never_crowd_out_a_failure(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    audit_module = importlib.import_module("symbiote.projections.audit")  # the package's `audit` is the function
    monkeypatch.setattr(audit_module, "_MAX_PER_KIND", 3)
    w = world
    for n in range(5):  # registry notes anyone can cause: bodies that are not key registrations
        await w.send(w.sign(w.owner, "key.registered", {"junk": n}))
    evil = SigningKey.generate("owner:evil")
    forged = make_event("key.registered", evil.principal, {"kid": evil.kid, "principal": "user:x", "role": "user"})
    seq = await w.send(sign_event(forged, evil))
    report = await audit(w.bus, checkpoint_dir=None)
    assert not report.ok and report.first_failure is not None and report.first_failure.seq == seq
    assert report.omitted["registry"] == 2 and report.omitted_failures == 0
    for _ in range(3):
        again = make_event("key.registered", evil.principal, {"kid": evil.kid, "principal": "user:x", "role": "user"})
        await w.send(sign_event(again, evil))
    report = await audit(w.bus, checkpoint_dir=None)
    assert report.omitted_failures == 1 and not report.ok and "(4 problem(s) in all)" in report.summary()


async def test_a_hostile_proposal_does_not_break_the_report(world: World, tmp_path: Path) -> None:
    w = world
    body = {"command": "echo", "args": {"text": "x"}, "confidence": b"\x01", "expires_at": now_ms() + 60_000}
    proposal = w.sign(w.agent, "command.proposed", body)
    await w.send(proposal)
    await w.send(w.runtime_event("command.started", proposal, sandbox={"backend": "inprocess"}))
    report = await audit(w.bus, checkpoint_dir=None)
    data = json.loads(json.dumps(report.as_map()))
    assert data["executions"][0]["confidence"] == "01"
    assert human_time(2**63).endswith("ms after 1970")
    write_html(report, tmp_path / "hostile.html")  # a confidence that is no number is said as it is
    assert "sure at 01" in (tmp_path / "hostile.html").read_text()


async def test_revoking_a_key_twice_is_a_note(world: World) -> None:
    w = world
    phone = SigningKey.generate("user:phone")
    await register_key(w.bus, w.owner, phone.kid, phone.principal)
    await revoke_key(w.bus, w.owner, phone.kid, phone.principal)
    again = await revoke_key(w.bus, w.owner, phone.kid, phone.principal)
    report = await audit(w.bus, checkpoint_dir=None)
    assert report.ok, report.summary()
    found = [(f.seq, f.kind, f.severity) for f in report.findings if f.kind != "uncovered"]
    assert found == [(again, "registry", "warn")]


# -- the service, files and PostgreSQL -------------------------------------------------------------
async def test_projections_service_checkpoints_on_schedule_and_when_idle(world: World, pg_dsn: str) -> None:
    w = world
    service = Projections(
        w.bus, pg_dsn, w.runtime, w.home.checkpoints_dir, checkpoint_interval_s=0.5, checkpoint_idle_s=0.3
    )
    async with service:
        for i in range(5):
            await w.send(w.text(f"note {i}"))
        last = await w.bus.last_seq()
        assert await service.wait_for(last, 20)
        await _until(lambda: service.checkpointer.last is not None and service.checkpointer.last.last_seq >= last)
        hits = await service.memory.search("note 3", k=1)
        assert hits and hits[0].text.startswith("note")
    service.shutdown()  # idempotent after the context exits
    files = sorted(w.home.checkpoints_dir.glob("*.json"))
    assert files
    conn = await connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT seq, root FROM audit_checkpoints ORDER BY seq")
    finally:
        await conn.close()
    assert [r["seq"] for r in rows] == [int(f.stem) for f in files]
    await w.send(w.text("one more"))
    assert await w.checkpointer(dsn=pg_dsn).checkpoint_now() is not None
    rows = await _rows(pg_dsn, "SELECT seq FROM audit_checkpoints ORDER BY seq")
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir, checkpoint_dsn=pg_dsn)
    assert report.ok and report.findings == [] and report.checkpoint_rows == len(rows) >= 2
    # the copy in PostgreSQL edited (another checkpoint's signed bytes), and one deleted
    first, second = rows[0]["seq"], rows[1]["seq"]
    conn = await connect(pg_dsn)
    try:
        await conn.execute(
            "UPDATE audit_checkpoints SET wire = (SELECT wire FROM audit_checkpoints WHERE seq = $2) WHERE seq = $1",
            first,
            second,
        )
        report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir, checkpoint_dsn=pg_dsn)
        found = {(f.seq, f.kind, f.severity) for f in report.findings}
        assert (None, "checkpoint_file", "fail") in found and not report.ok  # columns and bytes disagree
        await conn.execute("DELETE FROM audit_checkpoints WHERE seq = $1", first)
    finally:
        await conn.close()
    report = await audit(w.bus, checkpoint_dir=w.home.checkpoints_dir, checkpoint_dsn=pg_dsn)
    assert report.ok, report.summary()  # PostgreSQL may lag behind the files: a missing row is a note
    assert [(f.seq, f.kind, f.severity) for f in report.findings] == [(first, "unfiled_checkpoint", "warn")]


async def _rows(dsn: str, query: str) -> list[Any]:
    conn = await connect(dsn)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


# -- the command line -----------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer()
    history.register(app)
    return app


def test_cli_audit_exits_non_zero_naming_the_first_bad_seq(nats_url: str, tmp_path: Path) -> None:
    home = DataDir(tmp_path / "home")

    async def prepare() -> int:
        async with await Bus.connect(nats_url) as bus:
            await bus.ensure_stream()
            await initialize(bus, home, name="ann")
            await Checkpointer(bus, home.load_key("runtime"), home.checkpoints_dir).checkpoint_now()
            stranger = SigningKey.generate("user:[/eve]")  # rich markup in what the log says is printed as it is
            event = make_event("input.text", stranger.principal, {"text": "hi"})
            return (await bus.publish(sign_event(event, stranger))).seq

    bad = asyncio.run(prepare())
    runner = CliRunner()
    html = tmp_path / "report.html"
    args = ["audit", "--data-dir", str(home.root), "--nats-url", nats_url]
    result = runner.invoke(_app(), [*args, "--html", str(html)])
    assert result.exit_code == 1, result.output
    assert f"FAILED at seq {bad}" in result.output and "from user:[/eve]" in result.output
    page = html.read_text()
    assert "Problems found" in page and f"event #{bad}" in page and "<table>" in page
    result = runner.invoke(_app(), [*args, "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and data["first_bad_seq"] == bad
    # a report that cannot be written: the verdict comes first, then the error
    result = runner.invoke(_app(), [*args, "--html", str(tmp_path / "missing" / "report.html")])
    assert result.exit_code == 1 and f"FAILED at seq {bad}" in result.output
    assert "cannot write the report" in result.output


def test_cli_why_and_html_for_a_clean_log(nats_url: str, tmp_path: Path) -> None:
    home = DataDir(tmp_path / "home")

    async def prepare() -> str:
        async with await Bus.connect(nats_url) as bus:
            await bus.ensure_stream()
            await initialize(bus, home, name="ann")
            w = World(
                bus,
                home,
                home.load_key("owner"),
                home.load_key("user"),
                home.load_key("agent"),
                home.load_key("runtime"),
            )
            said = "[/x] hi [conceal]rm -rf ~[/conceal]"  # shown as it is, not as rich markup
            source = w.text(f"echo {said}")
            proposal = w.proposal(source, "echo", {"text": said})
            for event in (
                source,
                proposal,
                w.runtime_event("command.started", proposal, sandbox={"backend": "inprocess"}),
                w.runtime_event("command.succeeded", proposal, exit_code=0, output={"text": "hi"}, duration_ms=1),
            ):
                await w.send(event)
            await w.checkpointer().checkpoint_now()
            report = await audit(bus, checkpoint_dir=home.checkpoints_dir)
            write_html(report, tmp_path / "ok.html")
            return proposal.id

    command_id = asyncio.run(prepare())
    page = (tmp_path / "ok.html").read_text()
    assert "Everything checks out" in page and "which cover every event (but themselves)" in page
    # what ran, for people: the echo, proposed by the agent, needing no approval, succeeded
    ran = page.split("What ran, and who allowed it")[1]
    assert "echo" in ran and "agent:main (90 % sure)" in ran and "not needed" in ran and "succeeded" in ran
    runner = CliRunner()
    args = ["--data-dir", str(home.root), "--nats-url", nats_url]
    result = runner.invoke(_app(), ["why", command_id, *args, "--json"])
    assert result.exit_code == 0, result.output
    story = json.loads(result.output)
    assert story["allowed"] is True and [s["kind"] for s in story["steps"]] == [
        "input",
        "proposal",
        "execution",
        "result",
    ]
    result = runner.invoke(_app(), ["why", command_id, *args])
    assert result.exit_code == 0 and "allowed by the policy in force" in result.output, result.output
    assert "[/x] hi [conceal]rm -rf ~[/conceal]" in result.output
    result = runner.invoke(_app(), ["audit", *args])
    assert result.exit_code == 0, result.output
    unknown = "01a208df-1ed8-7001-956e-d63c0bcdc97f"
    result = runner.invoke(_app(), ["why", unknown, *args, "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["found"] is False
    assert json.loads(result.output)["allowed"] is None  # nothing ran: neither allowed nor not
    result = runner.invoke(_app(), ["why", "*", *args])  # not an id: never a subject wildcard
    assert result.exit_code == 2 and "is not an id: a command or request id is a UUID" in result.output


async def test_copied_and_wrongly_signed_decisions_do_not_count_as_runs(world: World) -> None:
    """A start the runtime signed for one command, copied onto another's subject, and a success
    the agent signed are not runs: the audit names the copy and the signer, counts one run, and
    accuses no command of running without approval. A command whose result was lost after it
    started (outcome_unknown) ran: it is not listed as refused."""
    w = world
    echo_in, risky_in, lost_in = w.text("echo one"), w.text("remove it"), w.text("echo two")
    echo = w.proposal(echo_in, "echo", {"text": "one"})
    risky = w.proposal(risky_in, "shell.run", {"argv": ["rm", "it"]})
    lost = w.proposal(lost_in, "echo", {"text": "two"})
    for event in (echo_in, echo, risky_in, risky, lost_in, lost):
        await w.send(event)
    started = w.runtime_event("command.started", echo, sandbox={"backend": "inprocess"})
    await w.send(started)
    copy_seq = await publish_raw_subject(w.bus, f"sym.cmd.{risky.id}.started".encode(), started.to_wire())
    body = {"command_id": risky.id, "exit_code": 0, "output": {"text": ""}, "duration_ms": 1}
    forged_seq = await w.send(w.sign(w.agent, "command.succeeded", body, corr=risky.corr, cause=risky.id))
    await w.send(w.runtime_event("command.started", lost, sandbox={"backend": "inprocess"}))
    await w.send(w.runtime_event("command.denied", lost, reason="outcome_unknown", detail="the runtime stopped"))
    await w.send(w.approval(echo))  # signed by the user, as it says; an echo needs none: it does not count
    success = w.runtime_event("command.succeeded", risky, exit_code=0, output={"text": ""}, duration_ms=1)
    success_seq = await w.send(success)  # the runtime's, yet after no start of its own

    report = await audit(w.bus, checkpoint_dir=None)
    found = {(f.seq, f.kind) for f in report.findings}
    assert (copy_seq, "replayed") in found and (forged_seq, "wrong_role") in found, report.findings
    policy = [(f.seq, f.message) for f in report.findings if f.kind == "policy"]
    assert policy == [(success_seq, f"command {risky.id} has an outcome (command.succeeded) but was never started")]
    assert report.commands_executed == 2
    runs = {run.command_id: run.outcome for run in report.executions}
    assert runs == {echo.id: None, lost.id: "unknown (its result was lost)"}
    assert report.refusals == []

    story = await why(w.bus, risky.id)  # why reads the command's events the same way
    assert not story.ran and story.problems == [] and not story.chain_ok
    notes = [s.text for s in story.steps if s.kind == "note"]
    assert notes == [
        f"command.started that does not count: a copy of a decision about command {echo.id}",
        f"command.succeeded that does not count: signed by {w.agent.principal}, not by the runtime",
    ], story.steps
    echoed = await why(w.bus, echo.id)
    approval = next(s for s in echoed.steps if s.kind == "approval")
    assert not approval.ok and "did not count" in approval.text
    assert echoed.chain_ok and echoed.as_map()["chain_ok"] is True  # valid, though it did not count


async def test_why_marks_where_the_log_lost_an_event(world: World, tmp_path: Path) -> None:
    """The approval of a command that ran is deleted: `why` still says it ran without one (the
    log as it is), and marks where an event went missing, so nobody takes that for the whole story."""
    w = world
    made = await session(w, tmp_path)
    shell = made["shell"].id
    approval = next(m for m in [m async for m in w.bus.read(f"sym.cmd.{shell}.approved")])
    await w.bus.js.delete_msg(w.bus.stream, approval.seq)
    story = await why(w.bus, shell)
    kinds = [s.kind for s in story.steps]
    assert kinds.index("gap") < kinds.index("execution"), kinds
    gap = next(s for s in story.steps if s.kind == "gap")
    assert gap.seq == approval.seq and not gap.ok and f"event #{approval.seq} was deleted" in gap.text
    assert story.problems and not story.chain_ok
    echo = await why(w.bus, made["echo"].id)  # a command with nothing deleted among its events
    assert "gap" not in [s.kind for s in echo.steps]


async def test_why_marks_deletions_before_the_first_step_left_and_after_the_last(world: World, tmp_path: Path) -> None:
    """A shell.run's start and outcome are deleted (it ran: nothing says so now), and an echo's
    proposal is deleted: each story marks where the log lost events, does not hold, and does not
    say "it never ran"; a command that ended is not told of deletions after its end."""
    w = world
    made = await session(w, tmp_path)
    shell, echo = made["shell"].id, made["echo"].id
    gone = [m.seq async for m in w.bus.read(f"sym.cmd.{shell}.>") if m.subject.endswith((".started", ".succeeded"))]
    proposed = [m.seq async for m in w.bus.read(f"sym.cmd.{echo}.proposed")]
    assert len(gone) == 2 and len(proposed) == 1
    for seq in [*gone, *proposed]:
        await w.bus.js.delete_msg(w.bus.stream, seq)

    story = await why(w.bus, shell)
    gaps = [s for s in story.steps if s.kind == "gap"]
    assert all(any(a <= seq <= b for a, b in (gap.details["deleted"] for gap in gaps)) for seq in gone), gaps
    assert story.steps[-1].kind == "gap" and "after these steps" in story.steps[-1].text
    assert not story.ran and not story.chain_ok and story.as_map()["chain_ok"] is False
    assert story.lines()[-1].startswith("Nothing left in the log says it ran, but events were deleted")

    echoed = await why(w.bus, echo)
    kinds = [s.kind for s in echoed.steps]
    # the request is found through the runtime's decisions; where its proposal was is marked
    assert kinds == ["input", "gap", "execution", "result"], kinds
    assert echoed.steps[1].details["deleted"] == proposed * 2 and "between these steps" in echoed.steps[1].text
    assert not echoed.chain_ok
    bad = await why(w.bus, made["bad"].id)  # denied before the deletions: its story is whole
    assert "gap" not in [s.kind for s in bad.steps] and bad.chain_ok


async def test_why_does_not_count_a_forged_start_as_a_run(world: World) -> None:
    """A start and a success claiming to be the runtime's, with signatures that fail: the story
    shows them marked, and says nothing proves the command ran (not "allowed by the policy")."""
    w = world
    source = w.text("run it")
    proposal = w.proposal(source, "shell.run", {"argv": ["rm", "-rf", "it"]})
    for event in (source, proposal):
        await w.send(event)
    stranger = SigningKey.generate("runtime:main")  # the runtime's name, not its key
    for kind, body in (("command.started", {"sandbox": {"backend": "bwrap"}}), ("command.succeeded", {"exit_code": 0})):
        forged = w.sign(stranger, kind, {"command_id": proposal.id, **body}, corr=proposal.corr, cause=proposal.id)
        await w.send(forged)
    story = await why(w.bus, proposal.id)
    execution = next(s for s in story.steps if s.kind == "execution")
    assert not execution.ok and not story.chain_ok
    assert not story.ran and story.as_map()["allowed"] is None
    assert story.lines()[-1] == "Nothing proves it ran: no start of it holds as the runtime's."
    assert "Allowed by the policy in force." not in story.lines()


async def test_a_stream_that_moves_events_off_their_subjects_fails_the_audit(world: World) -> None:
    """Whoever may change the stream's configuration sets a subject transform: the owner's
    revocation of a stolen key is stored off ``sym.reg.…`` (no registry reader applies it), and an
    approval with the stolen key would count. The audit fails on the configuration while it is
    there, and on the misplaced revocation after it is gone; `up` refuses such a stream."""
    from nats.js import api

    from symbiote.errors import BusError

    w = world
    stolen = SigningKey.generate("user:ann")
    await register_key(w.bus, w.owner, stolen.kid, stolen.principal)
    info = await w.bus.js.stream_info(w.bus.stream)
    info.config.subject_transform = api.SubjectTransform(src="sym.reg.>", dest="sym.moved.>")
    await w.bus.js.update_stream(info.config)
    await revoke_key(w.bus, w.owner, stolen.kid, stolen.principal)
    moved = await w.bus.last_seq()
    msg = await w.bus.get(moved)
    assert msg is not None and msg.subject.startswith("sym.moved.")

    report = await audit(w.bus, checkpoint_dir=None, uncovered_grace_s=3600)
    assert not report.ok
    config = [f for f in report.failures if f.kind == "stream_config"]
    assert len(config) == 1 and "sym.reg.>" in config[0].message and config[0].seq is None, report.findings
    assert (moved, "subject") in {(f.seq, f.kind) for f in report.failures}, report.findings
    with pytest.raises(BusError, match="subject transform"):
        await w.bus.ensure_stream()

    info.config.subject_transform = None
    await w.bus.js.update_stream(info.config)
    await w.bus.ensure_stream()  # as it should be again
    report = await audit(w.bus, checkpoint_dir=None, uncovered_grace_s=3600)
    assert [(f.seq, f.kind) for f in report.failures] == [(moved, "subject")], report.findings
    assert report.first_failure is not None and "readers of such events do not look" in report.first_failure.message


async def test_a_stream_made_anew_without_its_tail_fails_against_the_projections(world: World, pg_dsn: str) -> None:
    """The stream is deleted and made again from its first messages, byte for byte: no gap is
    left, and no checkpoint may cover the tail yet; the projections in PostgreSQL folded further,
    so the audit finds the log cut short there."""
    from symbiote.projections import Projector

    w = world
    for i in range(6):
        await w.send(w.text(f"note {i}"))
    folded = (await Projector(w.bus, pg_dsn, follow=False).run()).last_seq
    msgs = [m async for m in w.bus.read()]
    assert folded == msgs[-1].seq == len(msgs)
    report = await audit(w.bus, checkpoint_dir=None, checkpoint_dsn=pg_dsn, uncovered_grace_s=3600)
    assert "truncated" not in {f.kind for f in report.findings}
    await w.bus.js.delete_stream(w.bus.stream)
    await w.bus.ensure_stream()
    for msg in msgs[:-3]:
        await w.bus.publish_raw(msg.subject, msg.data)
    report = await audit(w.bus, checkpoint_dir=None, checkpoint_dsn=pg_dsn, uncovered_grace_s=3600)
    assert not report.ok and report.first_failure is not None
    assert report.first_failure.kind == "truncated" and report.first_failure.seq == len(msgs) - 2
    assert f"folded it through seq {folded}" in report.first_failure.message
    # filled up again past that point with copies of earlier events: the message there is another
    for msg in msgs[:4]:
        await w.bus.publish_raw(msg.subject, msg.data)
    assert await w.bus.last_seq() > folded
    report = await audit(w.bus, checkpoint_dir=None, checkpoint_dsn=pg_dsn, uncovered_grace_s=3600)
    assert [(f.seq, f.kind) for f in report.failures] == [(folded, "rewritten")], report.findings


async def test_a_forgery_under_a_registry_events_id_does_not_keep_the_real_one_out(world: World) -> None:
    """Only a registry event that was folded takes its id: a forged revocation published first
    under the real one's id is refused, the real one is still applied, and a copy of it is a replay."""
    from symbiote.registry.follower import RegistryFollower

    w = world
    phone = SigningKey.generate("user:phone")
    await register_key(w.bus, w.owner, phone.kid, phone.principal)
    last = await w.bus.last_seq()
    state = await RegistryFollower(w.bus).ensure_through(last)
    real = w.sign(w.owner, "key.revoked", {"kid": phone.kid, "principal": phone.principal, "role": "user"})
    forged = sign_event(real.model_copy(update={"sigs": ()}), SigningKey.generate(w.owner.principal))
    assert not state.apply(forged, last + 1).ok
    assert state.apply(real, last + 2).ok
    assert state.keyring.verify(w.text("after", key=phone), last + 3).ok is False  # revoked
    copy = state.apply(real, last + 4)
    assert not copy.ok and "replayed" in copy.detail


async def test_a_refused_registry_event_signed_as_it_says_cannot_be_replayed_later(world: World) -> None:
    """A policy change the owner signed with a key not yet registered is refused where it lies;
    the same bytes published again once the key is registered are a replay, not applied."""
    from symbiote.registry.follower import RegistryFollower

    w = world
    second = SigningKey.generate(w.owner.principal)
    change = w.sign(second, "policy.set", {"command": "echo", "approval": {"mode": "user", "quorum": 1}})
    last = await w.bus.last_seq()
    state = await RegistryFollower(w.bus).ensure_through(last)
    assert state.apply(change, last + 1).reason == "unknown_key"
    registered = w.sign(w.owner, "key.registered", {"kid": second.kid, "principal": second.principal, "role": "owner"})
    assert state.apply(registered, last + 2).ok
    again = state.apply(change, last + 3)
    assert not again.ok and "replayed" in again.detail


async def test_why_looks_for_a_missing_proposal_only_where_it_could_be(world: World) -> None:
    """A command whose proposal is gone: a deletion right before its first step left is marked, an
    unrelated one further back (with events between) is not; a pending command is told of
    deletions after it, one whose proposal expired long before them is not."""
    w = world
    unrelated = await w.send(w.text("an older request, deleted"))
    await w.send(w.text("something between"))
    await asyncio.sleep(0.05)  # the server's clock and ours, on one machine
    source = w.text("echo soon")
    proposal = w.proposal(source, "echo", {"text": "soon"})
    await w.send(source)
    proposed = await w.send(proposal)
    denied = await w.send(w.runtime_event("command.denied", proposal, reason="expired", detail="too late"))
    asked = denied - 2  # the request, found through the denial's corr
    for seq in (unrelated, proposed):
        await w.bus.js.delete_msg(w.bus.stream, seq)
    story = await why(w.bus, proposal.id, clock_leeway_ms=0)
    expected = [("input", asked), ("gap", proposed), ("denial", denied)]
    assert [(s.kind, s.seq) for s in story.steps] == expected, story.steps
    await w.bus.js.delete_msg(w.bus.stream, asked)  # the request too: where to look is by time now
    story = await why(w.bus, proposal.id, clock_leeway_ms=0)
    assert [(s.kind, s.seq) for s in story.steps] == [("input", None), ("gap", asked), ("denial", denied)]
    assert story.steps[1].details["deleted"] == [asked, proposed]
    wide = await why(w.bus, proposal.id, clock_leeway_ms=60_000)  # a clock that may run a minute ahead
    assert [s.seq for s in wide.steps if s.kind == "gap"] == [unrelated, asked]

    pending_in = w.text("run it")
    pending = w.proposal(pending_in, "shell.run", {"argv": ["true"]})
    await w.send(pending_in)
    await w.send(pending)
    after = await w.send(w.text("after it"))
    await w.bus.js.delete_msg(w.bus.stream, after)
    story = await why(w.bus, pending.id)
    assert story.steps[-1].kind == "gap" and story.steps[-1].details["deleted"] == [after, after]
    expired = w.sign(
        w.agent,
        "command.proposed",
        {"command": "shell.run", "args": {"argv": ["true"]}, "confidence": 0.9, "expires_at": now_ms() - 3_600_000},
        corr=pending_in.id,
        cause=pending_in.id,
    )
    await w.send(expired)
    later = await w.send(w.text("long after it expired"))
    await w.bus.js.delete_msg(w.bus.stream, later)
    story = await why(w.bus, expired.id, clock_leeway_ms=0)
    assert "gap" not in [s.kind for s in story.steps], story.steps


async def test_why_says_when_a_missing_proposal_may_have_been_purged(world: World) -> None:
    """The beginning of the log is purged with a command's proposal in it: the story of what is
    left (its denial) says that the purged events may have held its steps."""
    w = world
    source = w.text("echo purged")
    proposal = w.proposal(source, "echo", {"text": "purged"})
    await w.send(source)
    await w.send(proposal)
    denied = await w.send(w.runtime_event("command.denied", proposal, reason="expired", detail="too late"))
    await w.bus.js.purge_stream(w.bus.stream, seq=denied)  # everything before the denial
    story = await why(w.bus, proposal.id)
    assert [s.kind for s in story.steps] == ["gap", "denial"], story.steps
    assert story.steps[0].details["deleted"] == [1, denied - 1] and "purged" in story.steps[0].text
    assert not story.chain_ok


async def test_why_takes_a_proposal_with_an_expiry_beyond_any_calendar(world: World) -> None:
    """A hostile proposal's expiry past the year 9999 (or no number at all) does not break the
    story: deletions after it are marked, with no end to look for."""
    w = world
    for expires in (2**64 - 1, "soon"):
        body = {"command": "shell.run", "args": {"argv": ["true"]}, "confidence": 0.9, "expires_at": expires}
        proposal = w.sign(w.agent, "command.proposed", body)
        await w.send(proposal)
        after = await w.send(w.text("after it"))
        await w.bus.js.delete_msg(w.bus.stream, after)
        story = await why(w.bus, proposal.id)
        assert story.steps[-1].kind == "gap" and story.steps[-1].details["deleted"] == [after, after], story.steps
