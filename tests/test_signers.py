"""Key files and the key registry's position rule."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from symbiote.bus.envelope import Envelope, make_event
from symbiote.errors import KeyFileError
from symbiote.signers.keyring import Keyring
from symbiote.signers.keys import SigningKey, kid_in_file, public_key_from_kid, sign_event, verify_sig

pytestmark = pytest.mark.timeout(30)


def test_key_file_roundtrip_mode_and_encryption(tmp_path: Path) -> None:
    key = SigningKey.generate("user:alice")
    plain, secret = tmp_path / "plain.pem", tmp_path / "secret.pem"
    key.save(plain)
    key.save(secret, b"correct horse")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in plain.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in secret.read_bytes()
    assert SigningKey.load(plain).kid == key.kid
    loaded = SigningKey.load(secret, b"correct horse")
    assert (loaded.kid, loaded.principal) == (key.kid, "user:alice")
    with pytest.raises(KeyFileError):
        SigningKey.load(secret, b"wrong")
    with pytest.raises(KeyFileError):
        SigningKey.load(secret)
    with pytest.raises(KeyFileError):
        SigningKey.load(tmp_path / "missing.pem")


def test_a_key_file_names_its_kid_in_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit compares the log's owner with this installation's without the passphrase."""
    from symbiote.home import DataDir

    home = DataDir(tmp_path / "home")
    owner = SigningKey.generate("owner:ann")
    monkeypatch.setenv("SYMBIOTE_PASSPHRASE", "correct horse")
    home.save_key("owner", owner)
    monkeypatch.delenv("SYMBIOTE_PASSPHRASE")
    with pytest.raises(KeyFileError):
        home.load_key("owner")
    assert home.kid("owner") == owner.kid and kid_in_file(home.key_path("owner")) == owner.kid
    old = tmp_path / "old.pem"  # as written before the kid line: the kid comes from the key itself
    lines = home.key_path("owner").read_bytes().split(b"\n")
    old.write_bytes(b"\n".join(line for line in lines if not line.startswith(b"# kid: ")))
    assert kid_in_file(old) is None
    assert SigningKey.load(old, b"correct horse").kid == owner.kid


def test_kid_format_and_verification() -> None:
    key = SigningKey.from_seed(bytes(range(32)), "agent:a")
    assert key.kid.startswith("ed25519:") and len(key.kid) == 8 + 43 and "=" not in key.kid
    public_key_from_kid(key.kid)
    assert verify_sig(key.kid, key.sign(b"m"), b"m")
    assert not verify_sig(key.kid, key.sign(b"m"), b"n")
    assert not verify_sig("ed25519:short", b"x" * 64, b"m")


def _reg(owner: SigningKey, kid: str, principal: str, kind: str = "key.registered") -> Envelope:
    role = principal.split(":")[0]
    return sign_event(make_event(kind, owner.principal, {"kid": kid, "principal": principal, "role": role}), owner)


def test_keyring_position_rule_revocation_and_owner_only() -> None:
    owner, agent, other = SigningKey.generate("owner:o"), SigningKey.generate("agent:a"), SigningKey.generate("owner:x")
    ring = Keyring()
    # the first event must be a self-registered owner key
    assert ring.apply(_reg(owner, agent.kid, "agent:a"), 1).reason == "unknown_key"
    assert ring.apply(_reg(owner, owner.kid, "owner:o"), 2).ok
    assert ring.apply(_reg(owner, agent.kid, "agent:a"), 5).ok
    # an unregistered owner cannot register keys
    assert ring.apply(_reg(other, other.kid, "owner:x"), 6).reason == "unknown_key"
    # an agent key cannot register keys
    assert ring.apply(_reg(agent, SigningKey.generate("user:u").kid, "user:u"), 7).reason in ("wrong_role",)
    event = sign_event(make_event("input.text", "agent:a", {"text": "x"}), agent)
    assert ring.verify(event, 5).reason == "unknown_key", "a key counts only after its registration"
    assert ring.verify(event, 6).ok
    assert ring.apply(_reg(owner, agent.kid, "agent:a", "key.revoked"), 10).ok
    assert ring.verify(event, 10).ok, "a revocation counts for events after its own position"
    assert ring.verify(event, 11).reason == "revoked_key"
    tampered = event.model_copy(update={"body": {"text": "y"}})
    assert ring.verify(tampered, 8).reason == "bad_signature"
    impostor = sign_event(make_event("input.text", "user:a", {"text": "x"}), agent)
    assert ring.verify(impostor, 8).reason == "wrong_role"
    unsigned = make_event("input.text", "agent:a", {"text": "x"})
    assert ring.verify(unsigned, 8).reason == "bad_signature"
