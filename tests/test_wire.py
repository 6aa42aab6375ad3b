"""The wire contract of DESIGN §3, byte for byte, and the decoder's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from symbiote.bus.canonical import canon, decode_canonical
from symbiote.bus.envelope import MAX_EVENT_BYTES, Envelope, from_wire, make_event, peek_id
from symbiote.bus.events import parse_body, subject_for
from symbiote.bus.ids import derived_event_id, is_event_id, new_event_id
from symbiote.errors import DecodeError
from symbiote.signers.keys import SigningKey, sign_event

pytestmark = pytest.mark.timeout(30)
VECTORS = json.loads((Path(__file__).parent / "data" / "wire-v1.json").read_text())["cases"]


def _bin(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: _bin(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bin(v) for v in value]
    return value


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_vectors_reproduced_exactly(case: dict[str, Any]) -> None:
    event = Envelope.model_validate(_bin(case["event_json"]))
    keys = [SigningKey.from_seed(bytes.fromhex(s), "agent:x") for s in case["signer_seeds_hex"]]
    assert [k.kid for k in keys] == case["kids"]
    assert event.signing_input().hex() == case["signing_input_hex"]
    assert event.digest().hex() == case["digest_hex"]
    assert event.to_wire().hex() == case["wire_hex"]
    resigned = event.model_copy(update={"sigs": ()})
    for key in keys:
        resigned = sign_event(resigned, key)
    assert resigned.to_wire().hex() == case["wire_hex"], "Ed25519 is deterministic: same signatures"
    assert from_wire(bytes.fromhex(case["wire_hex"])) == event


def test_canon_sorts_keys_by_utf8_bytes_at_every_depth() -> None:
    value = {"b": {"z": 1, "a": [{"é": 1, "e": 2}]}, "a": 1.5}
    packed = canon(value)
    assert packed == msgpack.packb(
        {"a": 1.5, "b": {"a": [{"e": 2, "é": 1}], "z": 1}}, use_bin_type=True, use_single_float=False
    )
    assert decode_canonical(packed) == value


def _valid_wire() -> bytes:
    key = SigningKey.generate("agent:t")
    event = make_event(
        "command.proposed", "agent:t", {"command": "echo", "args": {"text": "x"}, "confidence": 0.5, "expires_at": 1}
    )
    return sign_event(event, key).to_wire()


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("unsorted keys", lambda m: msgpack.packb(dict(reversed(list(m.items()))), use_bin_type=True)),
        (
            "float32",
            lambda m: msgpack.packb(
                {**m, "body": {**m["body"], "confidence": 0.5}}, use_bin_type=True, use_single_float=True
            ),
        ),
        ("str as bin", lambda m: msgpack.packb({**m, "actor": b"agent:t"}, use_bin_type=True)),
        ("extra key", lambda m: canon({**m, "x": 1})),
        ("missing key", lambda m: canon({k: v for k, v in m.items() if k != "corr"})),
        ("bad id", lambda m: canon({**m, "id": "not-a-uuid"})),
        ("bad version", lambda m: canon({**m, "v": 2})),
        ("bad actor", lambda m: canon({**m, "actor": "nobody"})),
        ("trailing bytes", lambda m: canon(m) + b"\x00"),
        ("not a map", lambda m: canon([1, 2, 3])),
        ("ext type", lambda m: msgpack.packb(msgpack.ExtType(1, b"x"))),
        ("truncated", lambda m: canon(m)[:-3]),
        ("garbage", lambda m: b"\xc1\xff\x00garbage"),
        ("short signature", lambda m: canon({**m, "sigs": [{"kid": m["sigs"][0]["kid"], "sig": b"x" * 10}]})),
        ("unsorted nested keys", lambda m: msgpack.packb({**m, "body": dict(reversed(list(m["body"].items())))})),
        ("ext type in body", lambda m: msgpack.packb({**m, "body": {**m["body"], "x": msgpack.ExtType(5, b"!")}})),
        ("timestamp in body", lambda m: msgpack.packb({**m, "body": {**m["body"], "x": msgpack.Timestamp(1, 0)}})),
        ("bin map key in body", lambda m: msgpack.packb({**m, "body": {b"a": 1}}, use_bin_type=True)),
        ("version true", lambda m: canon({**m, "v": True})),
        ("version float", lambda m: canon({**m, "v": 1.0})),
        ("at bool", lambda m: canon({**m, "at": True})),
        ("at negative", lambda m: canon({**m, "at": -5})),
        ("type too long", lambda m: canon({**m, "type": "x" * 65})),
        ("body not a map", lambda m: canon({**m, "body": [1]})),
        ("sigs not an array", lambda m: canon({**m, "sigs": m["sigs"][0]})),
        ("signature extra key", lambda m: canon({**m, "sigs": [{**m["sigs"][0], "z": 1}]})),
        ("kid not a string", lambda m: canon({**m, "sigs": [{**m["sigs"][0], "kid": 7}]})),
        ("same key twice", lambda m: canon({**m, "sigs": [m["sigs"][0], m["sigs"][0]]})),
    ],
)
def test_decoder_rejects(name: str, mutate: Any) -> None:
    raw = msgpack.unpackb(_valid_wire(), raw=False)
    with pytest.raises(DecodeError):
        from_wire(mutate(raw))


def test_decoder_agrees_with_the_definition() -> None:
    """decode_canonical accepts exactly the bytes that are canon() of what they decode to."""
    raw = msgpack.unpackb(_valid_wire(), raw=False)
    nested = {"a": [1, {"b": 2.5, "c": [b"x", None, True]}], "é": {"z": -(2**63), "ä": 2**64 - 1}}
    candidates = [
        canon(raw),
        canon(nested),
        msgpack.packb(nested, use_bin_type=True),
        msgpack.packb({"b": 1, "a": 2}),
        msgpack.packb({"a": {"d": 1, "c": 2}}),
        msgpack.packb([{"b": 1, "a": 2}]),
        msgpack.packb({"a": 1.5}, use_single_float=True),
        msgpack.packb({"a": "x"}, use_bin_type=False),
        b"\xcd\x00\x01",  # 1 as uint16
        b"\xd9\x01a",  # "a" as str8
    ]
    for data in candidates:
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
            expected = canon(value) == data
        except (DecodeError, ValueError, TypeError):
            expected = False
        try:
            decode_canonical(data)
            accepted = True
        except DecodeError:
            accepted = False
        assert accepted == expected, data


def test_non_minimal_int_rejected() -> None:
    raw = msgpack.unpackb(_valid_wire(), raw=False)
    good = canon(raw)
    # "v": 1 is a positive fixint (0x01); the same value as uint64 (0xcf ...) is not canonical.
    bad = good.replace(b"\xa1v\x01", b"\xa1v\xcf" + (1).to_bytes(8, "big"))
    assert bad != good
    with pytest.raises(DecodeError, match="canonical"):
        from_wire(bad)


def test_duplicate_map_keys_rejected() -> None:
    # a map header claiming 2 entries with the same key twice
    data = b"\x82\xa1a\x01\xa1a\x02"
    with pytest.raises(DecodeError):
        decode_canonical(data)


def test_oversized_rejected_with_readable_id() -> None:
    key = SigningKey.generate("agent:t")
    event = sign_event(
        make_event(
            "command.proposed",
            "agent:t",
            {"command": "echo", "args": {"text": "x" * (MAX_EVENT_BYTES + 10)}, "confidence": 0.5, "expires_at": 1},
        ),
        key,
    )
    data = event.to_wire()
    with pytest.raises(DecodeError, match="too large"):
        from_wire(data)
    assert peek_id(data) == event.id


def test_body_models_and_subjects() -> None:
    event = make_event(
        "command.denied", "runtime:main", {"command_id": new_event_id(), "reason": "expired", "detail": "x"}
    )
    parse_body(event)
    assert subject_for(event).endswith(".denied")
    bad = make_event("command.denied", "runtime:main", {"command_id": new_event_id(), "reason": "nope", "detail": ""})
    with pytest.raises(DecodeError):
        parse_body(bad)
    proposal = make_event("command.proposed", "agent:x", {})
    assert subject_for(proposal) == f"sym.cmd.{proposal.id}.proposed"
    assert subject_for(make_event("input.text", "user:a", {"text": "hi"})) == "sym.in.text"


def test_event_ids_are_uuid7_and_derived_ids_are_stable() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(is_event_id(i) and i[14] == "7" for i in ids)
    assert ids == sorted(ids), "UUIDv7 ids from one process are monotonic"
    parent = ids[0]
    assert derived_event_id(parent, "proposal") == derived_event_id(parent, "proposal")
    assert derived_event_id(parent, "proposal") != derived_event_id(parent, "clarify")
    assert is_event_id(derived_event_id(parent, "proposal"))
