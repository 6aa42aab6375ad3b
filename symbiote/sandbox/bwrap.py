"""Bubblewrap backend: unprivileged namespaces, no network, read-only system, one writable workspace."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from symbiote.errors import SandboxUnavailable
from symbiote.sandbox.base import Sandbox, SandboxResult, existing_dir, validate_argv, validate_env
from symbiote.sandbox.profile import SandboxProfile

__all__ = ["BubblewrapSandbox"]

SANDBOX_UID = 65534  # "nobody" inside; maps to the calling user outside
WORKDIR = "/workspace"
# /etc is exposed by allow-list only: when the service runs as root the sandbox
# user is host root without capabilities and could read root-owned secrets
# (/etc/shadow, ssh host keys, tokens in config files).
# Each entry is one mount (~0.3 ms per run), so the list is kept short.
ETC_ALLOW = (
    "alternatives", "group", "hosts", "ld.so.cache", "localtime", "mime.types",
    "nsswitch.conf", "os-release", "passwd", "ssl/certs", "ssl/openssl.cnf",
)  # fmt: skip
_ROOT_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def _system_binds() -> list[str]:
    """bwrap arguments exposing the host's system directories read-only."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _ROOT_DIRS:
        host = f"/{name}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    etc = sorted(ETC_ALLOW) + sorted(n for n in os.listdir("/etc") if n.startswith("python3."))
    for name in etc:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _rlimits(profile: SandboxProfile) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) limits for a run; inherited by everything in the sandbox.

    CPU: SIGXCPU at the soft limit, SIGKILL one second later. A file write past
    ``max_file_mb`` fails (SIGXFSZ). RLIMIT_NPROC counts every process of the
    calling user and is not enforced at all for host root; it is set anyway as a
    best effort.
    """
    mem = profile.memory_mb * 1024 * 1024
    file_size = profile.max_file_mb * 1024 * 1024
    return [
        (resource.RLIMIT_CPU, profile.cpu_seconds, profile.cpu_seconds + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_FSIZE, file_size, file_size),
        (resource.RLIMIT_NPROC, profile.max_processes, profile.max_processes),
        (resource.RLIMIT_CORE, 0, 0),
    ]


_PRLIMIT_OPTS = {
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_AS: "--as",
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NPROC: "--nproc",
    resource.RLIMIT_CORE: "--core",
}


def _preexec(limits: list[tuple[int, int, int]]) -> Callable[[], None]:
    """A ``preexec_fn`` applying ``limits`` (used only when ``prlimit`` is missing: forking is slower)."""

    def apply() -> None:
        for res, soft, hard in limits:
            resource.setrlimit(res, (soft, hard))

    return apply


class BubblewrapSandbox(Sandbox):
    """Runs commands under ``bwrap``; never falls back to running unsandboxed.

    Each run gets new user (uid/gid 65534 inside, no capabilities, no nested
    user namespaces), pid, network (loopback only), ipc, uts and cgroup
    namespaces; ``/usr``, ``/bin``, ``/lib*`` and an allow-list of ``/etc``
    read-only on a read-only root; fresh ``/proc``; minimal read-only ``/dev``;
    ``/tmp`` and ``/dev/shm`` as tmpfs capped at ``memory_mb``; the workspace
    read-write at ``/workspace`` (the cwd); a clean environment; rlimits for
    CPU, address space and processes.
    """

    backend: ClassVar[str] = "bwrap"

    def __init__(self, bwrap_path: str | None = None) -> None:
        """Use ``bwrap_path``, or ``bwrap`` found on ``PATH``."""
        self.bwrap_path = bwrap_path if bwrap_path is not None else shutil.which("bwrap")
        self._prlimit = shutil.which("prlimit")
        self._system = _system_binds()

    def preflight(self) -> list[str]:
        """Check bwrap exists and can actually build the sandbox here (runs ``true`` in it)."""
        problems = self._binary_problems()
        if problems:
            return problems
        with tempfile.TemporaryDirectory(prefix="symbiote-bwrap-preflight-") as tmp:
            try:
                proc = subprocess.run(
                    self._command(Path(tmp), ["true"], {}, SandboxProfile()),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return [f"cannot run {self.bwrap_path}: {exc}"]
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", errors="replace").strip() or f"exit code {proc.returncode}"
            return [f"bwrap cannot create a sandbox on this host: {detail}"]
        return []

    async def run(
        self,
        argv: Sequence[str],
        *,
        workspace: Path,
        profile: SandboxProfile,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run ``argv`` under bwrap; see :meth:`Sandbox.run`."""
        problems = self._binary_problems() + self.profile_problems(profile)
        if problems:
            raise SandboxUnavailable(
                "bwrap sandbox cannot run this command: " + "; ".join(problems),
                backend=self.backend,
                problems=problems,
            )
        args = validate_argv(argv)
        preexec = None if self._prlimit else _preexec(_rlimits(profile))
        # bwrap reports on this pipe the process it made for the sandbox: without one, the
        # sandbox itself could not be made (e.g. no more processes for this user), and the
        # run is refused as unavailable rather than passed off as the command's failure
        status_read, status_write = os.pipe()
        try:
            try:
                cmd = self._command(existing_dir(workspace), args, validate_env(env), profile, status_write)
                result = await self._execute(
                    cmd, profile=profile, stdin=stdin, preexec_fn=preexec, pass_fds=(status_write,)
                )
            finally:
                os.close(status_write)
            status = _read_available(status_read)
        finally:
            os.close(status_read)
        if not result.timed_out and b'"child-pid"' not in status:
            detail = result.stderr.decode("utf-8", errors="replace").strip()[:2000] or f"exit code {result.exit_code}"
            raise SandboxUnavailable("bwrap could not create the sandbox", backend=self.backend, error=detail)
        return result

    @staticmethod
    def profile_problems(profile: SandboxProfile) -> list[str]:
        """Return what this backend cannot honour in ``profile`` ([] = runnable)."""
        problems = []
        if profile.network is not None:
            problems.append("egress allow-lists are not supported by the bwrap backend yet (network must be None)")
        if profile.gpu:
            problems.append("GPU access is not supported by the bwrap backend; use the OCI backend")
        return problems

    def _binary_problems(self) -> list[str]:
        if not self.bwrap_path:
            return ["bwrap not found on PATH (install bubblewrap)"]
        if not (os.path.isfile(self.bwrap_path) and os.access(self.bwrap_path, os.X_OK)):
            return [f"bwrap at {self.bwrap_path!r} is not an executable file"]
        return []

    def _command(
        self,
        workspace: Path,
        argv: list[str],
        env: Mapping[str, str],
        profile: SandboxProfile,
        status_fd: int | None = None,
    ) -> list[str]:
        """The full command line for one run: ``[prlimit ... --] bwrap ... -- argv``."""
        assert self.bwrap_path
        limits = []
        if self._prlimit:
            opts = [f"{_PRLIMIT_OPTS[res]}={soft}:{hard}" for res, soft, hard in _rlimits(profile)]
            limits = [self._prlimit, *opts, "--"]
        merged = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, **env}
        env_args = [a for key, value in merged.items() for a in ("--setenv", key, value)]
        tmpfs_size = str(profile.memory_mb * 1024 * 1024)
        return [
            *limits,
            self.bwrap_path,
            "--unshare-all",  # net (only lo), pid, ipc, uts, cgroup; user is forced below
            "--unshare-user",
            "--disable-userns",  # no nested user namespaces inside
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID),
            "--cap-drop", "ALL",  # as host root, caps would otherwise allow remounting rw
            "--die-with-parent",
            "--new-session",  # no TIOCSTI into the caller's terminal
            "--hostname", "sandbox",
            *self._system,
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", tmpfs_size, "--tmpfs", "/dev/shm",  # noqa: S108 (private to the sandbox)
            "--remount-ro", "/dev",
            "--size", tmpfs_size, "--tmpfs", "/tmp",  # noqa: S108 (private to the sandbox)
            "--bind", str(workspace), WORKDIR,
            "--remount-ro", "/",
            "--chdir", WORKDIR,
            "--clearenv",
            *env_args,
            *(["--json-status-fd", str(status_fd)] if status_fd is not None else []),
            "--",
            *argv,
        ]  # fmt: skip


def _read_available(fd: int) -> bytes:
    """What can be read from ``fd`` now, without waiting."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)
