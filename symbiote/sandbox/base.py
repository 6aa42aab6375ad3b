"""Backend-neutral parts of the sandbox: results, the backend interface, workspaces."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from symbiote.errors import SandboxError, SandboxUnavailable
from symbiote.lifecycle import cancel_and_wait
from symbiote.sandbox.profile import SandboxProfile

__all__ = ["Sandbox", "SandboxResult", "Workspaces"]

_CHUNK = 65536
_COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Once the sandbox's process tree is gone its pipes close at once; this only bounds the wait.
_KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``exit_code`` is the process exit code, ``128 + signum`` for a process
    killed by a signal (never negative). ``killed_signal`` is the signal when
    the run was killed by one: our own SIGKILL on timeout, or one reported by
    the sandbox as ``128 + signum`` (a program that itself exits with such a
    code cannot be told apart).
    """

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: int
    timed_out: bool
    truncated: bool
    killed_signal: int | None

    def output_map(self) -> dict[str, object]:
        """Return the output as JSON-able text (UTF-8, undecodable bytes replaced) plus flags."""
        return {
            "stdout": self.stdout.decode("utf-8", errors="replace"),
            "stderr": self.stderr.decode("utf-8", errors="replace"),
            "timed_out": self.timed_out,
            "truncated": self.truncated,
        }


class Sandbox(ABC):
    """A place where commands run isolated from the host; subclasses are backends."""

    backend: ClassVar[str]

    @abstractmethod
    def preflight(self) -> list[str]:
        """Return human-readable problems that keep this backend from running ([] = ready).

        Never raises for missing things; it reports them.
        """

    async def check(self) -> None:
        """Raise :class:`SandboxUnavailable` (with ``problems``) unless :meth:`preflight` is clean."""
        problems = await asyncio.to_thread(self.preflight)
        if problems:
            raise SandboxUnavailable(
                f"{self.backend} sandbox is not usable: " + "; ".join(problems),
                backend=self.backend,
                problems=problems,
            )

    @abstractmethod
    async def run(
        self,
        argv: Sequence[str],
        *,
        workspace: Path,
        profile: SandboxProfile,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run ``argv`` in the sandbox with ``workspace`` as its writable working directory.

        Raises :class:`SandboxUnavailable` when the profile cannot be honoured
        (never runs with weaker isolation) and :class:`SandboxError` for bad
        arguments; a command that fails is a result, not an exception.
        """

    def snapshot(self, workspace: Path) -> Path:
        """Copy ``workspace`` to a new sibling directory and return its path.

        The copy is named ``.<workspace name>.snapshot-*`` (a name no command
        id can take); removing it when no longer needed is the caller's job.
        Symlinks are copied as links (never followed) and special files
        (FIFOs, sockets, devices) are skipped.
        """
        workspace = existing_dir(workspace)
        snap = Path(tempfile.mkdtemp(prefix=f".{workspace.name}.snapshot-", dir=workspace.parent))
        try:
            shutil.copytree(workspace, snap, symlinks=True, ignore=_special_files, dirs_exist_ok=True)
        except (OSError, shutil.Error) as exc:
            shutil.rmtree(snap, ignore_errors=True)
            raise SandboxError("cannot snapshot workspace", workspace=str(workspace), error=str(exc)) from exc
        return snap

    def rollback(self, workspace: Path, snapshot: Path) -> None:
        """Make ``workspace`` hold exactly what ``snapshot`` holds; the snapshot is kept."""
        workspace = existing_dir(workspace)
        snapshot = existing_dir(snapshot)
        try:
            for entry in os.scandir(workspace):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            shutil.copytree(snapshot, workspace, symlinks=True, ignore=_special_files, dirs_exist_ok=True)
        except (OSError, shutil.Error) as exc:
            raise SandboxError("cannot roll back workspace", workspace=str(workspace), error=str(exc)) from exc

    async def _execute(
        self,
        cmd: Sequence[str],
        *,
        profile: SandboxProfile,
        stdin: bytes | None,
        preexec_fn: Callable[[], None] | None = None,
        on_timeout: Callable[[], Awaitable[None]] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> SandboxResult:
        """Run the backend command line ``cmd`` with output caps and the wall-clock timeout.

        The process gets its own session; on timeout or cancellation its whole
        process group is sent SIGKILL (``on_timeout`` may do more, e.g. kill a
        container).
        """
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec_fn,
                pass_fds=pass_fds,
            )
        except OSError as exc:
            raise SandboxUnavailable(
                f"cannot start {self.backend} sandbox", backend=self.backend, error=str(exc)
            ) from exc
        assert proc.stdout is not None  # PIPE was asked for
        assert proc.stderr is not None
        readers = [
            asyncio.create_task(_read_capped(proc.stdout, profile.max_output_bytes)),
            asyncio.create_task(_read_capped(proc.stderr, profile.max_output_bytes)),
        ]
        feeder = asyncio.create_task(_feed(proc.stdin, stdin)) if proc.stdin is not None else None
        waiter = asyncio.create_task(proc.wait())
        timed_out = False
        try:
            done, _ = await asyncio.wait({waiter}, timeout=profile.timeout_s)
            if not done:
                timed_out = True
                _kill_group(proc.pid)
                if on_timeout is not None:
                    await on_timeout()
                # wait() also waits for the pipes: anything still holding them survived the kill.
                done, _ = await asyncio.wait({waiter}, timeout=_KILL_GRACE_S)
                if not done:
                    raise SandboxError("sandboxed processes survived SIGKILL", backend=self.backend, pid=proc.pid)
            returncode = waiter.result()
            await asyncio.wait(readers, timeout=_KILL_GRACE_S)
        finally:
            try:
                if proc.returncode is None:  # cancelled, or the kill above did not take
                    _kill_group(proc.pid)
                    # reap it, so its pipes and transport close now, not when collected after the loop
                    await asyncio.wait({waiter}, timeout=_KILL_GRACE_S)
            finally:  # even if cancelled again while reaping
                await cancel_and_wait([*readers, waiter, *([feeder] if feeder else [])])
        duration_ms = int((time.monotonic() - start) * 1000)
        outputs = [r.result() if r.done() and not r.cancelled() else (b"", False) for r in readers]
        (stdout, out_cut), (stderr, err_cut) = outputs
        killed_signal: int | None = None
        if returncode < 0:
            killed_signal = -returncode
            exit_code = 128 - returncode
        else:
            exit_code = returncode
            if 128 < returncode <= 128 + 64:
                killed_signal = returncode - 128
        return SandboxResult(
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            duration_ms=duration_ms,
            timed_out=timed_out,
            truncated=out_cut or err_cut,
            killed_signal=killed_signal,
        )


class Workspaces:
    """Per-command workspace directories (mode 0700) under ``root``."""

    def __init__(self, root: Path) -> None:
        """Remember ``root``; it is created on first use."""
        self.root = Path(root).absolute()

    def for_command(self, command_id: str) -> Path:
        """Create (or reuse) and return ``root/<command_id>/``.

        ``command_id`` must be 1-128 characters of letters, digits, ``.``,
        ``_`` and ``-``, starting with a letter or digit; anything else
        (path separators, ``..``, hidden names) raises :class:`SandboxError`.
        """
        if not isinstance(command_id, str) or not _COMMAND_ID.fullmatch(command_id):
            raise SandboxError("invalid command id for a workspace", command_id=command_id)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.root / command_id
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
            st = path.lstat()
            if not stat.S_ISDIR(st.st_mode):
                raise SandboxError("workspace path exists and is not a directory", path=str(path))
            os.chmod(path, 0o700)
        except OSError as exc:
            raise SandboxError("cannot create workspace", root=str(self.root), error=str(exc)) from exc
        return path


def validate_argv(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` as a list after checking it is a non-empty sequence of NUL-free strings."""
    if isinstance(argv, str | bytes) or not argv:
        raise SandboxError("argv must be a non-empty sequence of strings", argv=argv)
    out = list(argv)
    if not all(isinstance(a, str) and "\0" not in a for a in out):
        raise SandboxError("argv items must be strings without NUL", argv=out)
    return out


def validate_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Return ``env`` as a dict after checking names are identifiers and values NUL-free strings."""
    out: dict[str, str] = {}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise SandboxError("invalid environment variable name", name=key)
        if not isinstance(value, str) or "\0" in value:
            raise SandboxError("invalid environment variable value", name=key)
        out[key] = value
    return out


def existing_dir(path: Path) -> Path:
    """Return ``path`` resolved, or raise :class:`SandboxError` if it is not an existing directory."""
    resolved = Path(path).resolve()
    if not resolved.is_dir():
        raise SandboxError("not an existing directory", path=str(path))
    return resolved


def _special_files(directory: str, names: list[str]) -> set[str]:
    """``copytree`` ignore hook: skip anything that is not a dir, regular file or symlink."""
    skipped = set()
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    """Read ``stream`` to EOF keeping at most ``cap`` bytes; return (data, truncated)."""
    buf = bytearray()
    truncated = False
    while chunk := await stream.read(_CHUNK):
        room = cap - len(buf)
        if room > 0:
            buf += chunk[:room]
        if len(chunk) > room:
            truncated = True
    return bytes(buf), truncated


async def _feed(writer: asyncio.StreamWriter, data: bytes | None) -> None:
    """Write ``data`` to the child's stdin and close it; a child that stops reading is fine."""
    try:
        if data:
            writer.write(data)
            await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        writer.close()
