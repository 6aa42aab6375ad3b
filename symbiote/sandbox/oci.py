"""OCI backend: runs commands in a container through the podman or docker CLI (needed for GPUs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from symbiote.errors import SandboxError, SandboxUnavailable
from symbiote.sandbox.base import Sandbox, SandboxResult, existing_dir, validate_argv, validate_env
from symbiote.sandbox.profile import SandboxProfile

__all__ = ["OciSandbox"]

DEFAULT_IMAGE = "docker.io/library/python:3.11-slim"
WORKDIR = "/workspace"


class OciSandbox(Sandbox):
    """Runs each command in a fresh container: no network, read-only root, workspace at ``/workspace``.

    GPUs are given with a CDI device (podman: ``--device nvidia.com/gpu=all``)
    or ``--gpus all`` (docker). Egress allow-lists are not supported yet.
    """

    backend: ClassVar[str] = "oci"

    def __init__(self, image: str = DEFAULT_IMAGE, engine: str | None = None) -> None:
        """Use container ``image`` with ``engine`` (a path), or podman/docker found on ``PATH``."""
        self.image = image
        self.engine = engine if engine is not None else (shutil.which("podman") or shutil.which("docker"))

    @property
    def _is_podman(self) -> bool:
        return bool(self.engine) and "podman" in os.path.basename(str(self.engine))

    def preflight(self) -> list[str]:
        """Report a missing container engine, or one that does not answer ``info``."""
        if not self.engine:
            return ["no container engine found on PATH (install podman or docker)"]
        if not (os.path.isfile(self.engine) and os.access(self.engine, os.X_OK)):
            return [f"container engine {self.engine!r} is not an executable file"]
        try:
            proc = subprocess.run(
                [self.engine, "info"], stdin=subprocess.DEVNULL, capture_output=True, timeout=15, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return [f"cannot run {self.engine}: {exc}"]
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", errors="replace").strip() or f"exit code {proc.returncode}"
            return [f"container engine {self.engine} is not working: {detail}"]
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
        """Run ``argv`` in a new container; see :meth:`Sandbox.run`."""
        problems = []
        if not self.engine:
            problems.append("no container engine found on PATH (install podman or docker)")
        if profile.network is not None:
            problems.append("egress allow-lists are not supported by the oci backend yet (network must be None)")
        if problems:
            raise SandboxUnavailable(
                "oci sandbox cannot run this command: " + "; ".join(problems),
                backend=self.backend,
                problems=problems,
            )
        assert self.engine
        args = validate_argv(argv)
        ws = existing_dir(workspace)
        if any(c in str(ws) for c in ":,"):
            raise SandboxError("workspace must be an existing directory without ':' or ','", workspace=str(ws))
        name = f"symbiote-{uuid.uuid4().hex}"
        mb = profile.memory_mb
        cmd = [
            self.engine, "run", "--rm", "--init", "--name", name,
            *(["--interactive"] if stdin is not None else []),
            "--network", "none",
            "--read-only",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--pids-limit", str(profile.max_processes),
            "--memory", f"{mb}m", "--memory-swap", f"{mb}m",
            "--ulimit", f"cpu={profile.cpu_seconds}:{profile.cpu_seconds + 1}",
            "--tmpfs", f"/tmp:rw,size={mb}m",  # noqa: S108 (private to the container)
            "--mount", f"type=bind,source={ws},target={WORKDIR}",
            "--workdir", WORKDIR,
            "--env", f"HOME={WORKDIR}",
            *[a for k, v in validate_env(env).items() for a in ("--env", f"{k}={v}")],
            *self._gpu_args(profile),
            self.image,
            *args,
        ]  # fmt: skip

        async def remove() -> None:
            await self._remove(name)

        try:
            return await self._execute(cmd, profile=profile, stdin=stdin, on_timeout=remove)
        except asyncio.CancelledError:
            await asyncio.shield(remove())
            raise

    def _gpu_args(self, profile: SandboxProfile) -> list[str]:
        if not profile.gpu:
            return []
        return ["--device", "nvidia.com/gpu=all"] if self._is_podman else ["--gpus", "all"]

    async def _remove(self, name: str) -> None:
        """Force-remove container ``name`` (killing the CLI does not stop a docker container)."""
        assert self.engine
        with contextlib.suppress(OSError):
            proc = await asyncio.create_subprocess_exec(
                self.engine, "rm", "--force", name,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await proc.wait()
