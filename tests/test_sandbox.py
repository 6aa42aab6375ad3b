"""Tests of symbiote.sandbox against the real bubblewrap (no mocks)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import time
import uuid
from pathlib import Path

import pytest

from symbiote.errors import SandboxError, SandboxUnavailable
from symbiote.sandbox import BubblewrapSandbox, SandboxProfile, SandboxResult, Workspaces
from symbiote.sandbox.oci import OciSandbox

pytestmark = [pytest.mark.timeout(30)]


PY = "python3"  # the system python inside the sandbox (/usr/bin/python3)


@pytest.fixture
def sandbox() -> BubblewrapSandbox:
    """A bubblewrap sandbox using bwrap from PATH."""
    return BubblewrapSandbox()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty workspace directory inside ``tmp_path``."""
    return Workspaces(tmp_path / "workspaces").for_command("cmd-1")


def _pids_mentioning(marker: str) -> list[int]:
    """Pids of processes whose command line contains ``marker`` (excluding this process)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry))
    return pids


async def _wait_gone(marker: str, within_s: float = 10.0) -> list[int]:
    """Poll until no process mentions ``marker`` (kernel teardown is asynchronous); return leftovers."""
    deadline = time.monotonic() + within_s
    while (left := _pids_mentioning(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return left


def _unique_seconds() -> str:
    """A sleep duration no other process on the host is likely to use."""
    return str(1000 + uuid.uuid4().int % 8_000_000)


# --------------------------------------------------------------------------
# Basic execution
# --------------------------------------------------------------------------


async def test_echo_and_exit_code(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(
        ["sh", "-c", "echo hello; echo oops >&2; exit 7"], workspace=workspace, profile=SandboxProfile()
    )
    assert isinstance(result, SandboxResult)
    assert result.exit_code == 7
    assert result.stdout == b"hello\n"
    assert result.stderr == b"oops\n"
    assert not result.timed_out
    assert not result.truncated
    assert result.killed_signal is None
    assert result.duration_ms >= 0
    assert result.output_map() == {"stdout": "hello\n", "stderr": "oops\n", "timed_out": False, "truncated": False}


async def test_zero_exit_stdin_and_cwd(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(["sh", "-c", "pwd; cat"], workspace=workspace, profile=SandboxProfile(), stdin=b"data")
    assert result.exit_code == 0
    assert result.stdout == b"/workspace\ndata"


async def test_clean_environment(sandbox: BubblewrapSandbox, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMBIOTE_HOST_SECRET", "leak")
    result = await sandbox.run(["env"], workspace=workspace, profile=SandboxProfile(), env={"GREETING": "hi there"})
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] == "/workspace"
    assert env["GREETING"] == "hi there"
    assert "SYMBIOTE_HOST_SECRET" not in env


async def test_bad_env_name_rejected(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    with pytest.raises(SandboxError):
        await sandbox.run(["true"], workspace=workspace, profile=SandboxProfile(), env={"A=B": "x"})


async def test_missing_executable_is_a_result(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(["no-such-program-xyz"], workspace=workspace, profile=SandboxProfile())
    assert result.exit_code != 0
    assert b"no-such-program-xyz" in result.stderr


async def test_runs_unprivileged(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(
        ["sh", "-c", "id -u; grep CapEff /proc/self/status; mount -o remount,rw /usr"],
        workspace=workspace,
        profile=SandboxProfile(),
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "65534"
    assert lines[1].split() == ["CapEff:", "0000000000000000"]
    assert result.exit_code != 0  # the remount was refused


# --------------------------------------------------------------------------
# Isolation
# --------------------------------------------------------------------------


async def test_no_network(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        script = (
            "import socket\n"
            f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 80)]:\n"
            "    try:\n"
            "        socket.create_connection(addr, timeout=2).close(); print('connected', addr)\n"
            "    except OSError as e:\n"
            "        print('failed', type(e).__name__)\n"
            "print(open('/proc/net/dev').read())\n"
        )
        result = await sandbox.run([PY, "-c", script], workspace=workspace, profile=SandboxProfile())
    finally:
        listener.close()
    out = result.stdout.decode()
    assert result.exit_code == 0, result.stderr
    assert "connected" not in out
    assert out.count("failed") == 2
    interfaces = [line.split(":")[0].strip() for line in out.splitlines() if ":" in line]
    assert interfaces == ["lo"]


async def test_system_read_only_workspace_writable(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(
        [
            "sh",
            "-c",
            "for p in /usr/x /etc/x /x /bin/x; do touch $p 2>/dev/null && echo wrote $p; done;"
            "echo made > /workspace/out.txt; mkdir -p sub && echo deep > sub/f",
        ],
        workspace=workspace,
        profile=SandboxProfile(),
    )
    assert result.exit_code == 0, result.stderr
    assert b"wrote" not in result.stdout
    assert not os.path.lexists("/usr/x")  # noqa: ASYNC240 (one stat in a test)
    assert (workspace / "out.txt").read_text() == "made\n"
    assert (workspace / "sub" / "f").read_text() == "deep\n"


async def test_host_files_not_visible(sandbox: BubblewrapSandbox, workspace: Path, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("top secret")
    home_secret = Path.home() / f".symbiote-test-{uuid.uuid4().hex}"
    home_secret.write_text("home secret")
    try:
        result = await sandbox.run(
            ["sh", "-c", f"cat {secret} {home_secret} /etc/shadow; ls {Path.cwd()}; ls /root /home"],
            workspace=workspace,
            profile=SandboxProfile(),
        )
    finally:
        home_secret.unlink()
    assert result.exit_code != 0
    assert b"secret" not in result.stdout
    assert b"root:" not in result.stdout
    assert result.stdout == b""


async def test_tmp_is_private_and_capped(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(
        ["sh", "-c", "head -c 100000000 /dev/zero > /tmp/big; echo rc=$?; ls /tmp"],
        workspace=workspace,
        profile=SandboxProfile(memory_mb=64),
    )
    assert b"rc=1" in result.stdout
    assert b"No space left" in result.stderr


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


async def test_timeout_kills_whole_tree(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    n = _unique_seconds()
    started = time.monotonic()
    result = await sandbox.run(
        ["sh", "-c", f"sleep {n} & sleep {n}"], workspace=workspace, profile=SandboxProfile(timeout_s=0.5)
    )
    assert time.monotonic() - started < 15  # not the minutes the sleeps would take
    assert result.timed_out
    assert result.killed_signal == signal.SIGKILL
    assert result.exit_code == 128 + signal.SIGKILL
    assert await _wait_gone(n) == []


async def test_cancellation_kills_whole_tree(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    n = _unique_seconds()
    task = asyncio.create_task(
        sandbox.run(["sh", "-c", f"sleep {n} & sleep {n}"], workspace=workspace, profile=SandboxProfile())
    )
    deadline = time.monotonic() + 10
    while len(_pids_mentioning(n)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert _pids_mentioning(n), "the sandboxed processes never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_gone(n) == []


async def test_memory_limit(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    alloc = "b = bytearray(%d); print('allocated')"
    small = await sandbox.run(
        [PY, "-c", alloc % (50 << 20)], workspace=workspace, profile=SandboxProfile(memory_mb=256)
    )
    assert small.exit_code == 0, small.stderr
    big = await sandbox.run([PY, "-c", alloc % (2 << 30)], workspace=workspace, profile=SandboxProfile(memory_mb=256))
    assert big.exit_code != 0
    assert b"allocated" not in big.stdout
    assert b"MemoryError" in big.stderr


async def test_file_size_limit(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    write = ["sh", "-c", "head -c 3000000 /dev/zero > big; echo $?"]
    result = await sandbox.run(write, workspace=workspace, profile=SandboxProfile(max_file_mb=1))
    assert result.stdout == b"153\n"  # 128 + SIGXFSZ
    assert (workspace / "big").stat().st_size == 1 << 20
    whole = await sandbox.run(write, workspace=workspace, profile=SandboxProfile(max_file_mb=3))
    assert whole.stdout == b"0\n" and (workspace / "big").stat().st_size == 3_000_000


async def test_a_sandbox_that_cannot_be_made_is_unavailable_not_a_failed_command(
    sandbox: BubblewrapSandbox, workspace: Path
) -> None:
    """bwrap failing before it made the sandbox (here: too little address space to load it at all;
    elsewhere e.g. too many processes for the user) is no result of the command's own."""
    with pytest.raises(SandboxUnavailable, match="could not create the sandbox") as caught:
        await sandbox.run(["true"], workspace=workspace, profile=SandboxProfile(memory_mb=1))
    assert "error while loading shared libraries" in caught.value.fields["error"]
    missing = await sandbox.run(["no-such-program-xyz"], workspace=workspace, profile=SandboxProfile())
    assert missing.exit_code != 0  # the sandbox was made: the command's own failure


async def test_cpu_limit(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(
        [PY, "-c", "while True: pass"], workspace=workspace, profile=SandboxProfile(cpu_seconds=1, timeout_s=20)
    )
    assert not result.timed_out
    assert result.killed_signal in (signal.SIGXCPU, signal.SIGKILL)
    assert result.exit_code == 128 + result.killed_signal
    assert result.duration_ms < 10_000


async def test_output_cap(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(
        ["sh", "-c", "head -c 5000000 /dev/zero; echo short >&2"],
        workspace=workspace,
        profile=SandboxProfile(max_output_bytes=1000),
    )
    assert result.exit_code == 0
    assert result.stdout == b"\0" * 1000
    assert result.stderr == b"short\n"
    assert result.truncated
    assert result.output_map()["truncated"] is True


async def test_large_output_does_not_deadlock(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    result = await sandbox.run(
        ["sh", "-c", "yes | head -c 50000000; yes | head -c 50000000 >&2"],
        workspace=workspace,
        profile=SandboxProfile(timeout_s=20),
    )
    assert result.exit_code == 0
    assert not result.timed_out
    assert len(result.stdout) == len(result.stderr) == 1_000_000
    assert result.truncated


# --------------------------------------------------------------------------
# Unsupported profiles, preflight
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "profile", [SandboxProfile(gpu=True), SandboxProfile(network=("pypi.org",)), SandboxProfile(network=())]
)
async def test_unsupported_profile_refused(
    sandbox: BubblewrapSandbox, workspace: Path, profile: SandboxProfile
) -> None:
    with pytest.raises(SandboxUnavailable) as info:
        await sandbox.run(["touch", "ran"], workspace=workspace, profile=profile)
    assert info.value.fields["problems"]
    assert not (workspace / "ran").exists()


async def test_preflight_ok(sandbox: BubblewrapSandbox) -> None:
    assert sandbox.preflight() == []
    await sandbox.check()


async def test_preflight_bogus_bwrap(tmp_path: Path, workspace: Path) -> None:
    bogus = BubblewrapSandbox(bwrap_path=str(tmp_path / "no-bwrap-here"))
    problems = bogus.preflight()
    assert len(problems) == 1
    assert "no-bwrap-here" in problems[0]
    with pytest.raises(SandboxUnavailable) as info:
        await bogus.check()
    assert info.value.fields["problems"] == problems
    with pytest.raises(SandboxUnavailable):
        await bogus.run(["touch", "ran"], workspace=workspace, profile=SandboxProfile())
    assert not (workspace / "ran").exists()


async def test_preflight_broken_bwrap(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    problems = BubblewrapSandbox(bwrap_path=str(fake)).preflight()
    assert len(problems) == 1
    assert "No permissions to create new namespace" in problems[0]


async def test_oci_preflight_without_engine(tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    oci = OciSandbox()
    assert oci.engine is None
    problems = oci.preflight()
    assert len(problems) == 1
    assert "container engine" in problems[0]
    with pytest.raises(SandboxUnavailable):
        await oci.check()
    with pytest.raises(SandboxUnavailable):
        await oci.run(["true"], workspace=workspace, profile=SandboxProfile())
    assert OciSandbox(engine=str(tmp_path / "podman")).preflight() != []


# --------------------------------------------------------------------------
# Workspaces, snapshot / rollback
# --------------------------------------------------------------------------


def test_workspaces_create_private_dirs(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path / "root")
    path = spaces.for_command("cmd_01.a-b")
    assert path == tmp_path / "root" / "cmd_01.a-b"
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    (path / "keep").write_text("x")
    assert spaces.for_command("cmd_01.a-b") == path
    assert (path / "keep").exists()


@pytest.mark.parametrize("bad", ["../escape", "..", ".", "", "a/b", "/abs", ".hidden", "a\0b", "x" * 200, "a b"])
def test_workspaces_reject_bad_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SandboxError):
        Workspaces(tmp_path / "root").for_command(bad)
    assert not (tmp_path / "escape").exists()


async def test_snapshot_and_rollback(sandbox: BubblewrapSandbox, workspace: Path) -> None:
    (workspace / "a.txt").write_text("original")
    (workspace / "dir").mkdir()
    (workspace / "dir" / "b.txt").write_text("nested")
    snap = sandbox.snapshot(workspace)
    assert snap.parent == workspace.parent
    assert snap != workspace
    result = await sandbox.run(
        ["sh", "-c", "echo changed > a.txt; rm -r dir; echo new > c.txt; ln -s /etc/passwd link; mkfifo pipe"],
        workspace=workspace,
        profile=SandboxProfile(snapshot=True),
    )
    assert result.exit_code == 0, result.stderr
    assert (workspace / "a.txt").read_text() == "changed\n"

    second = sandbox.snapshot(workspace)  # a FIFO must not hang the copy; a symlink stays a link
    assert (second / "link").is_symlink()
    assert not (second / "pipe").exists()

    sandbox.rollback(workspace, snap)
    assert sorted(os.listdir(workspace)) == ["a.txt", "dir"]
    assert (workspace / "a.txt").read_text() == "original"
    assert (workspace / "dir" / "b.txt").read_text() == "nested"
    assert (snap / "a.txt").read_text() == "original"


def test_rollback_missing_snapshot(tmp_path: Path, workspace: Path) -> None:
    with pytest.raises(SandboxError):
        BubblewrapSandbox().rollback(workspace, tmp_path / "missing")


# --------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------


def test_profile_roundtrip() -> None:
    profile = SandboxProfile(network=("pypi.org",), gpu=True, cpu_seconds=3, memory_mb=128, timeout_s=2, snapshot=True)
    described = profile.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["network"] == ["pypi.org"]
    assert SandboxProfile.from_mapping(described) == profile
    assert SandboxProfile.from_mapping(SandboxProfile().describe()) == SandboxProfile()
    assert SandboxProfile.from_mapping({}) == SandboxProfile()


@pytest.mark.parametrize(
    "data",
    [
        {"network": "pypi.org"},
        {"network": [1]},
        {"gpu": "yes"},
        {"cpu_seconds": True},
        {"cpu_seconds": 0},
        {"memory_mb": -1},
        {"timeout_s": "5"},
        {"timeout_s": float("inf")},
        {"max_output_bytes": 1.5},
        {"unknown": 1},
    ],
)
def test_profile_from_mapping_rejects_bad_input(data: dict[str, object]) -> None:
    with pytest.raises(SandboxError):
        SandboxProfile.from_mapping(data)


def test_result_output_map_replaces_bad_utf8() -> None:
    result = SandboxResult(
        exit_code=0, stdout=b"\xff ok", stderr=b"", duration_ms=1, timed_out=False, truncated=False, killed_signal=None
    )
    assert result.output_map()["stdout"] == "\ufffd ok"


async def test_a_command_run_in_an_empty_workspace_leaves_no_empty_snapshot(tmp_path: Path) -> None:
    """shell.run snapshots its workspace first; a workspace that held nothing yet (a command's
    first run) leaves no empty copy behind, and the output names none."""
    from symbiote.dispatcher import Executors
    from symbiote.registry.state import default_definitions

    shell = next(d for d in default_definitions() if d.name == "shell.run")
    assert shell.sandbox.snapshot
    executors = Executors(tmp_path / "ws")
    outcome = await executors.run("01a23c4c-dd2c-7000-8000-0123456789ab", shell, {"argv": ["true"]})
    assert outcome.exit_code == 0, outcome.output
    assert "snapshot" not in outcome.output
    assert [p.name for p in (tmp_path / "ws").iterdir()] == ["01a23c4c-dd2c-7000-8000-0123456789ab"]
