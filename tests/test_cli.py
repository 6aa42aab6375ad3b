"""The command line as a person uses it: `symbiote up` in its own process, the other commands against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from symbiote.registry.definition import load_definition
from symbiote.signers.keys import SigningKey
from tests.helpers import SPOKEN_REQUEST, World, speak

pytestmark = pytest.mark.timeout(120)
SYMBIOTE = [sys.executable, "-m", "symbiote.cli"]


def cli(data_dir: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SYMBIOTE, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    data_dir = tmp_path / "home"
    proc = subprocess.Popen(
        # the API on a free port: everything `make run` starts
        [*SYMBIOTE, "up", "--data-dir", str(data_dir), "--api-port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    runtime = data_dir / "runtime.json"
    deadline = time.monotonic() + 60
    while not runtime.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "runtime.json never appeared"
        time.sleep(0.1)
    try:
        yield data_dir, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_init_twice_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "home"
    first = cli(data_dir, "init", "--name", "alice")
    assert "keys created: owner:alice, agent:main, runtime:main, user:alice" in first.stdout
    keys = {p.name: p.read_bytes() for p in (data_dir / "keys").iterdir()}
    second = cli(data_dir, "init", "--name", "alice")
    assert "nothing changed" in second.stdout
    assert keys == {p.name: p.read_bytes() for p in (data_dir / "keys").iterdir()}
    assert all((data_dir / "keys" / name).stat().st_mode & 0o077 == 0 for name in keys)


def test_a_fresh_install_passes_the_audit_at_any_later_time(tmp_path: Path) -> None:
    """init writes to the log with no runtime up: it signs a checkpoint itself, so nothing it
    wrote is left uncovered (which fails once older than the grace period)."""
    data_dir = tmp_path / "home"
    cli(data_dir, "init", "--name", "alice")
    audited = cli(data_dir, "audit", "--grace", "0", "--json", check=False)
    report = json.loads(audited.stdout)
    assert audited.returncode == 0 and report["ok"] is True and report["findings"] == [], audited.stdout
    assert data_dir.stat().st_mode & 0o077 == 0


@pytest.mark.timeout(300)  # some thirty CLI processes and `up` with PostgreSQL, on a slow machine too
def test_up_say_events_keys_and_clean_stop(running: tuple[Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    data_dir, proc = running
    runtime = json.loads((data_dir / "runtime.json").read_text())
    assert set(runtime) == {"nats_url", "nats_token", "postgres_dsn", "api_url", "pid"}
    assert runtime["nats_url"].startswith("nats://127.0.0.1:") and runtime["pid"] == proc.pid
    assert runtime["postgres_dsn"].startswith("postgresql://")
    # the embedded nats-server serves only holders of the data dir's token (a 0600 file)
    assert runtime["nats_token"] is True
    for private in ("nats", "nats.token", "runtime.json", "nats/nats-server.conf"):
        assert (data_dir / private).stat().st_mode & 0o077 == 0, private
    stranger = cli(data_dir, "events", "--nats-url", runtime["nats_url"], check=False, timeout=30)
    assert stranger.returncode == 1 and "Authorization" in stranger.stdout + stranger.stderr

    said = cli(data_dir, "say", "echo hello cli", "--wait", "--json")
    lines = [json.loads(line) for line in said.stdout.splitlines()]
    assert [row["type"] for row in lines[1:]] == ["command.proposed", "command.started", "command.succeeded"]
    assert lines[-1]["body"]["output"] == {"text": "hello cli"}
    assert lines[-1]["verified"] == ["runtime:main"]

    # spoken: the recording is transcribed here, and the transcript is a signed input.voice
    speech = speak(SPOKEN_REQUEST, tmp_path / "request.wav")
    spoken = [
        json.loads(line)
        for line in cli(data_dir, "say", "--audio", str(speech), "--wait", "--json").stdout.splitlines()
    ]
    assert spoken[0]["type"] == "transcript" and "good morning" in spoken[0]["heard"].lower(), spoken[0]
    assert spoken[0]["audio_ms"] > 1000
    assert spoken[1]["type"] == "input.voice"
    assert [row["type"] for row in spoken[2:]] == ["command.proposed", "command.started", "command.succeeded"]
    assert "good morning" in spoken[-1]["body"]["output"]["text"].lower()
    quiet = tmp_path / "quiet.wav"
    with wave.open(str(quiet), "wb") as recording:
        recording.setnchannels(1)
        recording.setsampwidth(2)
        recording.setframerate(16_000)
        recording.writeframes(bytes(2 * 16_000))
    silent = cli(data_dir, "say", "--audio", str(quiet), check=False)
    assert silent.returncode == 1 and "no speech was heard" in silent.stderr, silent.stdout + silent.stderr

    risky = cli(data_dir, "say", "run echo approved-from-cli", "--wait", "--json")
    request = json.loads(risky.stdout.splitlines()[-1])
    assert request["type"] == "command.approval_requested"
    command_id = request["body"]["command_id"]
    pending = json.loads(cli(data_dir, "approvals", "--json").stdout.splitlines()[0])
    assert pending["command_id"] == command_id and pending["request_text"] == "run echo approved-from-cli"
    assert pending["asked_by"].startswith("user:") and pending["expires_at"] > 0
    narrow = subprocess.run(  # a narrow terminal: nothing is cut off, and the id stays whole
        [*SYMBIOTE, "approvals", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "50"},
    )
    assert command_id in narrow.stdout.splitlines()[0] and "network none" in narrow.stdout, narrow.stdout
    assert "'run echo approved-from-cli'" in narrow.stdout and "open until: 20" in narrow.stdout, narrow.stdout
    approved = cli(data_dir, "approve", command_id, "--wait", "--json")
    assert '"command.succeeded"' in approved.stdout and "approved-from-cli" in approved.stdout
    # --wait exits with what became of the request: scripts can tell
    failing = json.loads(cli(data_dir, "say", "run false", "--wait", "--json").stdout.splitlines()[-1])
    failed = cli(data_dir, "approve", failing["body"]["command_id"], "--wait", check=False)
    assert failed.returncode == 1 and "command.failed" in failed.stdout, failed.stdout
    unwanted = json.loads(cli(data_dir, "say", "run true", "--wait", "--json").stdout.splitlines()[-1])
    cli(data_dir, "reject", unwanted["body"]["command_id"], "--wait")  # rejected, as asked: exit 0
    nothing_fits = cli(data_dir, "say", "book a flight to Rome", "--wait", check=False)
    assert nothing_fits.returncode == 3 and "command.suggested" in nothing_fits.stdout, nothing_fits.stdout

    listed = cli(data_dir, "events").stdout  # for people: each command event names its command
    assert any("command.succeeded" in line and command_id in line for line in listed.splitlines()), listed
    events = [json.loads(line) for line in cli(data_dir, "events", "--json").stdout.splitlines()]
    assert events[0]["type"] == "key.registered" and events[0]["verified"] == [events[0]["actor"]]
    assert all(e["problem"] is None for e in events), [e for e in events if e["problem"]]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    device = SigningKey.generate("user:phone")
    cli(data_dir, "keys", "add", "phone", "--role", "user", "--public-key", device.kid)
    listed = [json.loads(line) for line in cli(data_dir, "keys", "list", "--json").stdout.splitlines()]
    assert {"principal": "user:phone", "kid": device.kid}.items() <= next(
        k for k in listed if k["principal"] == "user:phone"
    ).items()
    cli(data_dir, "keys", "revoke", device.kid)
    listed = [json.loads(line) for line in cli(data_dir, "keys", "list", "--json").stdout.splitlines()]
    assert next(k for k in listed if k["principal"] == "user:phone")["revoked_seq"] is not None
    twice = cli(data_dir, "keys", "revoke", device.kid, check=False)
    assert twice.returncode == 1 and "user:phone's key was already revoked, at seq" in twice.stderr, twice.stderr
    assert cli(data_dir, "keys", "add", "x", "--role", "user", "--public-key", "ed25519:bad", check=False).returncode
    again = cli(data_dir, "keys", "add", "phone2", "--role", "user", "--public-key", device.kid, check=False)
    assert again.returncode == 1 and "already registered, as user:phone" in again.stderr, again.stderr
    assert "revoked at seq" in again.stderr
    spaced = cli(data_dir, "keys", "add", "Bob Smith", "--role", "user", "--public-key", device.kid, check=False)
    assert spaced.returncode == 2 and "lower-case" in spaced.stderr, spaced.stderr
    assert "registry.refused" not in cli(data_dir, "keys", "list").stderr
    second = cli(data_dir, "up", "--no-api", check=False)  # one runtime per data dir
    assert second.returncode == 1 and "in use by symbiote up" in second.stderr, second.stderr

    definition = tmp_path / "greet.toml"
    definition.write_text(
        'name = "greet"\ndescription = "Greet someone"\nexecutor = "builtin:echo"\n[args_schema]\ntype = "object"\n'
    )
    assert "defined greet at seq" in cli(data_dir, "commands", "add", str(definition)).stdout
    again = cli(data_dir, "commands", "add", str(definition)).stdout
    assert "greet is already defined so: nothing was published" in again, again
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "broken"\nargv = "ls"\n')
    refused = cli(data_dir, "commands", "add", str(broken), check=False)
    assert refused.returncode == 1 and "description: missing" in refused.stderr, refused.stderr
    assert "argv: Input should be a valid list" in refused.stderr and "pydantic" not in refused.stderr
    names = [json.loads(line)["name"] for line in cli(data_dir, "commands", "list", "--json").stdout.splitlines()]
    assert names == ["echo", "greet", "memory.search", "note.write", "shell.run"]

    # the history: why a command ran, a replay equal to the live projections, a clean audit
    story = cli(data_dir, "why", command_id, "--json")
    kinds = [step["kind"] for step in json.loads(story.stdout)["steps"]]
    assert kinds[0] == "input" and "approval" in " ".join(kinds), kinds
    recalled = cli(data_dir, "say", "search my memory for approved-from-cli", "--wait", "--json")
    assert "approved-from-cli" in recalled.stdout, recalled.stdout
    replayed = cli(data_dir, "replay", "--json")
    assert json.loads(replayed.stdout)["ok"] is True, replayed.stdout
    audited = cli(data_dir, "audit", "--json", "--html", str(tmp_path / "audit.html"))
    assert json.loads(audited.stdout)["ok"] is True, audited.stdout
    assert "<html" in (tmp_path / "audit.html").read_text().lower()
    assert (tmp_path / "audit.html").stat().st_mode & 0o077 == 0  # it holds what was asked

    children = _children(proc.pid)
    assert len(children) >= 2, "nats-server and postgres run as children of `symbiote up`"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not (data_dir / "runtime.json").exists()
    assert proc.stdout is not None
    said_by_up = proc.stdout.read()
    assert f'{sys.executable} -m symbiote.cli say "echo hello" --wait' in said_by_up  # as it was started
    assert said_by_up.rstrip().endswith("stopping…\nstopped.")
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_commands_fail_clearly_when_the_runtime_is_down(tmp_path: Path) -> None:
    result = cli(tmp_path / "nowhere", "say", "echo hi", check=False)
    assert result.returncode == 1
    assert "symbiote up" in result.stderr
    neither = cli(tmp_path / "nowhere", "say", check=False)
    assert neither.returncode == 2 and "--audio" in neither.stderr


def test_the_readme_example_definition_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "disk.usage.toml").write_text(block)
    definition = load_definition(tmp_path / "disk.usage.toml")
    assert definition.name == "disk.usage" and definition.executor == "shell" and definition.idempotent


def test_a_definition_that_could_never_run_is_refused_before_it_is_signed(tmp_path: Path) -> None:
    from symbiote.errors import ConfigError

    head = 'name = "x"\ndescription = "x"\n'
    cases = {
        'executor = "bash"\n': "executor: 'bash' is none of shell, noop or builtin:<name>",
        'executor = "shell"\n': "argv: a shell command without one runs args.argv, which args_schema",
        'executor = "builtin:echo"\nargv = ["ls"]\n': "argv, stdin: only a shell command has them",
        'executor = "shell"\nargv = ["ls", "{path}"]\n': "'{path}' uses {path}, which args_schema.properties",
        'executor = "shell"\nargv = ["sh", "-c", "echo ${HOME}"]\n': "uses {HOME}",
        'executor = "shell"\nargv = ["echo", "{"]\n': "is not a valid template",
    }
    for body, words in cases.items():
        (tmp_path / "x.toml").write_text(head + body)
        with pytest.raises(ConfigError, match="invalid command definition") as info:
            load_definition(tmp_path / "x.toml")
        assert words in info.value.message, (body, info.value.message)
    fine = 'executor = "shell"\nargv = ["echo", "{{literal}}", "{text}"]\nstdin = "{text}"\n'
    schema = '[args_schema]\ntype = "object"\n[args_schema.properties.text]\ntype = "string"\n'
    (tmp_path / "x.toml").write_text(head + fine + schema)
    assert load_definition(tmp_path / "x.toml").argv == ["echo", "{{literal}}", "{text}"]
    runs_argv = '[args_schema]\ntype = "object"\n[args_schema.properties.argv]\ntype = "array"\n'
    (tmp_path / "x.toml").write_text(head + 'executor = "shell"\n' + runs_argv)
    assert load_definition(tmp_path / "x.toml").argv == []  # it runs args.argv


def test_a_server_that_would_not_start_is_told_with_the_end_of_its_log(capsys: pytest.CaptureFixture[str]) -> None:
    from symbiote.cli.common import print_error
    from symbiote.errors import ServerStartError

    log = '---- starting postgres\nLOG:  starting\nFATAL:  lock file "postmaster.pid" already exists\n'
    print_error(ServerStartError("postgres exited during startup", log=log, log_path="/x/postgres.log", pid=7))
    out = capsys.readouterr().err
    assert "error: postgres exited during startup\n" in out and "\\n" not in out
    assert '    FATAL:  lock file "postmaster.pid" already exists\n' in out and "its whole log: /x/postgres.log" in out


async def test_events_shows_who_signed_a_registry_change_it_refused(world: World) -> None:
    """A command definition signed by the agent holds as a signature but is refused (only the
    owner changes the registry): `events` says who signed it, and that it was refused; a
    forged signature is a cross, with no signer."""
    from symbiote.bootstrap import define_command
    from symbiote.cli.chain import rows
    from symbiote.cli.common import _print_row, console
    from symbiote.registry.state import default_definitions

    definition = default_definitions()[0]
    seq = await define_command(world.bus, world.agent, definition)
    forged = SigningKey.generate("owner:mallory")
    forged_seq = await define_command(world.bus, forged, definition)
    found = {row.seq: row async for row in rows(world.bus)}
    refused, unknown = found[seq], found[forged_seq]
    assert refused.verified == [world.agent.principal]
    assert refused.problem is not None and refused.problem.startswith("wrong_role")
    assert unknown.verified == [] and unknown.problem is not None and unknown.problem.startswith("unknown_key")
    with console.capture() as captured:
        _print_row(refused)
        _print_row(unknown)
    lines = captured.get().splitlines()
    assert f"✓ {world.agent.principal} refused: wrong_role" in lines[0]
    assert "✗ unknown_key" in lines[1] and "✓" not in lines[1]


def test_a_result_that_says_nothing_is_told_in_words() -> None:
    from symbiote.cli.common import _summary_text

    def said(output: dict[str, object]) -> str:
        return _summary_text("command.succeeded", {"exit_code": 0, "output": output})

    assert said({"stdout": "hi\n"}) == "exit 0: 'hi'"
    assert said({"stdout": "", "stderr": ""}) == "exit 0 (no output)"
    assert said({"query": "rome", "hits": []}) == "exit 0: nothing related found in memory"
    assert said({"hits": [{"text": "a flight to Rome"}]}) == "exit 0: '1 found: a flight to Rome'"


def test_say_refuses_a_request_that_says_nothing_or_too_much(tmp_path: Path) -> None:
    cli(tmp_path, "init")
    blank = cli(tmp_path, "say", "  ", check=False)
    assert blank.returncode == 2 and "the request says nothing: nothing was sent" in blank.stderr
    long = cli(tmp_path, "say", "x" * 8001, check=False)
    assert long.returncode == 1 and "text: String should have at most 8000 characters" in long.stderr, long.stderr
    assert "pydantic" not in long.stderr


async def test_a_request_with_a_body_its_readers_refuse_is_shown_so(world: World) -> None:
    """An empty request, signed and published by some other client: `events` shows who signed it
    and that its body is refused, as the projection does; `why` says it led to nothing."""
    from symbiote.bus.envelope import make_event
    from symbiote.cli.chain import rows
    from symbiote.projections import why
    from symbiote.signers.keys import sign_event

    empty = sign_event(make_event("input.text", world.user.principal, {"text": ""}), world.user)
    seq = (await world.bus.publish(empty)).seq
    (row,) = [row async for row in rows(world.bus) if row.seq == seq]
    assert row.verified == [world.user.principal]
    assert row.problem == "invalid body: event body invalid: text: String should have at least 1 character"
    story = await why(world.bus, empty.id)
    assert not story.found and story.request_seq == seq
    assert story.lines() == [f"The request {empty.id} (seq {seq}) led to nothing: the agent made no command of it."]
    stranger = SigningKey.generate(world.user.principal)  # the person's name, not their key
    forged = sign_event(make_event("input.text", stranger.principal, {"text": "wipe it"}), stranger)
    forged_seq = (await world.bus.publish(forged)).seq
    story = await why(world.bus, forged.id)
    assert story.request_seq == forged_seq and story.request_problem is not None
    assert "no one can be said to have asked it: its signature does not hold (unknown_key" in story.lines()[0]


def test_ids_are_checked_alike_and_taken_in_any_case(tmp_path: Path) -> None:
    cli(tmp_path, "init")
    listed = cli(tmp_path, "events").stdout  # the runtime is down: the log is read all the same
    assert "key.registered" in listed.splitlines()[0], listed
    for args in (["why", "nonsense"], ["approve", "12345"], ["reject", "not-an-id"]):
        refused = cli(tmp_path, *args, check=False)
        assert refused.returncode == 2 and "is not an id: a command or request id is a UUID" in refused.stderr
    upper = "01A23C4C-DD2C-7000-8000-0123456789AB"
    unknown = cli(tmp_path, "why", upper, check=False)
    assert unknown.returncode == 1 and f"has the id {upper.lower()}" in unknown.stdout, unknown.stdout
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a pipe, no width given: no line is broken
    piped = subprocess.run(
        [*SYMBIOTE, "why", upper, "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert piped.stdout.count("\n") == 1 and len(piped.stdout) > 90, piped.stdout


def test_names_and_log_levels_are_checked_before_anything_starts(tmp_path: Path) -> None:
    from symbiote.signers.keys import valid_name

    assert valid_name("ann") and not valid_name("ann\n") and not valid_name("Bad Name!")
    refused = cli(tmp_path, "init", "--name", "Bad Name!", check=False)
    assert refused.returncode == 1 and "a name is lower-case letters" in refused.stderr, refused.stderr
    assert not list((tmp_path / "keys").glob("*.pem"))  # no key was made under the refused name
    for command in ("up", "dispatcher"):
        loud = cli(tmp_path, command, "--log-level", "LOUD", check=False)
        assert loud.returncode == 2 and "'LOUD' is not one of" in loud.stderr and "Traceback" not in loud.stderr


async def test_events_says_where_the_log_lost_events(world: World) -> None:
    from symbiote.cli.chain import rows
    from symbiote.cli.common import _print_row, _summary_text, console

    last = await world.bus.last_seq()
    await world.bus.js.delete_msg(world.bus.stream, last - 1)
    await world.bus.js.delete_msg(world.bus.stream, last - 2)
    found = [row async for row in rows(world.bus)]
    assert [row.seq for row in found] == [*range(1, last - 1), last]  # one row for the two missing
    gap = found[last - 3]
    assert gap.event is None and gap.problem is not None
    assert gap.problem.startswith(f"#{last - 2}–#{last - 1} were deleted from the log")
    with console.capture() as captured:
        _print_row(gap)
    assert "were deleted from the log" in captured.get()
    body = {"first_seq": 1, "last_seq": 9, "count": 9}
    assert _summary_text("audit.checkpoint", body) == "covers #1–#9 (9 events)"


def test_a_policy_is_described_in_words() -> None:
    from symbiote.registry.definition import ApprovalPolicy, duration_words

    assert ApprovalPolicy(mode="user").describe() == "needs 1 approval from any registered user within 10 minutes"
    two = ApprovalPolicy(mode="user", quorum=2, principals=["user:a", "user:b"], expires_in=3600)
    assert two.describe() == "needs 2 approvals from user:a, user:b within 1 hour"
    assert [duration_words(s) for s in (1, 90, 120, 86400 * 2)] == ["1 second", "90 seconds", "2 minutes", "2 days"]
