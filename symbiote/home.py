"""The data directory: where keys, server state, workspaces and ``runtime.json`` live."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from symbiote.errors import ConfigError, KeyFileError
from symbiote.files import write_private
from symbiote.signers.keys import SigningKey, kid_in_file

__all__ = ["ROLE_FILES", "DataDir", "default_data_dir"]

ROLE_FILES = {"owner": "owner.pem", "agent": "agent.pem", "runtime": "runtime.pem", "user": "user.pem"}


def default_data_dir() -> Path:
    """``$SYMBIOTE_DATA_DIR``, else ``~/.local/share/symbiote``."""
    env = os.environ.get("SYMBIOTE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "symbiote"


@dataclass(frozen=True)
class DataDir:
    """Paths under one data directory, and the keys kept there."""

    root: Path

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def nats_dir(self) -> Path:
        return self.root / "nats"

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def workspaces_dir(self) -> Path:
        return self.root / "workspaces"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def runtime_file(self) -> Path:
        return self.root / "runtime.json"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @contextlib.contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        """Hold this data dir for ``holder`` (``symbiote up``, or a command that starts its own
        NATS on it): two servers on one store would corrupt it. The lock goes with the process
        (``flock``), so a process that died holds nothing. Raises :class:`ConfigError` naming the
        holder when another process has it."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.root.mkdir()
            os.chmod(self.root, 0o700)  # made here: the owner's alone, whatever the umask
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
                raise ConfigError(
                    f"this data dir is in use by {held}: stop it first, or use another data dir",
                    data_dir=str(self.root),
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def ensure(self) -> None:
        """Create the folders: a folder made here is the owner's alone (mode 0700). One that
        exists loses only read and write for others: its search bits stay, since the embedded
        PostgreSQL, run as its own user when started by root, needs them to reach its data."""
        for path in (self.root, self.keys_dir, self.workspaces_dir, self.checkpoints_dir):
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                mode = stat.S_IMODE(path.stat().st_mode)
                if mode & 0o066:
                    os.chmod(path, mode & ~0o066)
            else:
                os.chmod(path, 0o700)

    @staticmethod
    def passphrase() -> bytes | None:
        """The key passphrase from ``$SYMBIOTE_PASSPHRASE`` (keys are encrypted at rest when set)."""
        value = os.environ.get("SYMBIOTE_PASSPHRASE")
        return value.encode() if value else None

    def key_path(self, role: str) -> Path:
        return self.keys_dir / ROLE_FILES[role]

    def has_key(self, role: str) -> bool:
        return self.key_path(role).exists()

    def load_key(self, role: str) -> SigningKey:
        path = self.key_path(role)
        if not path.exists():
            raise ConfigError(
                f"no {role} key in this data dir: start `symbiote up` (or run `symbiote init`)", path=str(path)
            )
        key = SigningKey.load(path, self.passphrase())
        if not key.principal.startswith(f"{role}:"):
            raise KeyFileError("key file principal does not match its role", path=str(path), principal=key.principal)
        return key

    def kid(self, role: str) -> str:
        """The public kid of this data dir's ``role`` key, without its passphrase when the file
        names it in clear (every key file written since it does)."""
        return kid_in_file(self.key_path(role)) or self.load_key(role).kid

    def save_key(self, role: str, key: SigningKey) -> None:
        key.save(self.key_path(role), self.passphrase())

    def read_runtime(self) -> dict[str, Any] | None:
        """The running runtime's addresses, or None when it is not up."""
        try:
            data = json.loads(self.runtime_file.read_text())
        except (OSError, ValueError):
            return None
        pid = data.get("pid")
        if isinstance(pid, int) and not _alive(pid):
            return None
        return data if isinstance(data, dict) else None

    @property
    def nats_port_file(self) -> Path:
        """The port the embedded nats-server last listened on (taken again when free)."""
        return self.root / "nats.port"

    @property
    def nats_token_file(self) -> Path:
        return self.root / "nats.token"

    def nats_token(self) -> str:
        """The embedded nats-server's authorization token (made once, kept in a 0600 file)."""
        path = self.nats_token_file
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # O_EXCL: only the first start makes the token (of two at once, one), every start reads it
            with (
                contextlib.suppress(FileExistsError),
                os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out,
            ):
                out.write(secrets.token_urlsafe(32) + "\n")
            os.chmod(path, 0o600)
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError("cannot read or make the NATS token", path=str(path), error=str(exc)) from exc
        if not token:
            raise ConfigError("the NATS token file is empty: remove it to make a new one", path=str(path))
        return token

    def write_runtime(self, data: dict[str, Any]) -> None:
        """Write ``runtime.json`` (mode 0600: a ``--nats-url`` may carry credentials)."""
        write_private(self.runtime_file, (json.dumps(data, indent=2) + "\n").encode())

    def clear_runtime(self) -> None:
        """Remove ``runtime.json`` if this process wrote it (never another runtime's)."""
        try:
            data = json.loads(self.runtime_file.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("pid") not in (None, os.getpid()):
            return
        self.runtime_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
