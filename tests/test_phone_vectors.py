"""The phone page's canonical msgpack (``symbiote/api/static/canon.js``) in real headless Chromium.

Every case of ``tests/data/wire-v1.json`` must come out byte for byte: signing input, digest
(WebCrypto SHA-256), wire bytes, kids and — signing with WebCrypto Ed25519 from the seeds —
the signatures themselves. The JS decoder must refuse every non-canonical input that the
Python decoder refuses, and round-trip everything Python's ``canon`` produces.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from symbiote.api.app import STATIC_DIR
from symbiote.bus.canonical import canon, decode_canonical
from symbiote.errors import DecodeError

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(60)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ORIGIN = "https://symbiote.test"
VECTORS = json.loads((Path(__file__).parent / "data" / "wire-v1.json").read_text())
HARNESS = """<!doctype html><meta charset="utf-8"><script type="module">
import * as canon from "/canon.js"; window.canon = canon; window.ready = true;
</script>"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """A Chromium page on a secure (https) origin that has loaded the page's canon.js."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `make test` installs it (apt-get install -y chromium)")
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(ignore_https_errors=True)
            pg = context.new_page()

            def serve(route: Any) -> None:
                path = route.request.url[len(ORIGIN) :].split("?")[0]
                if path == "/harness.html":
                    route.fulfill(status=200, content_type="text/html", body=HARNESS)
                    return
                file = STATIC_DIR / path.lstrip("/")
                if file.is_file() and file.parent == STATIC_DIR:
                    route.fulfill(status=200, content_type="text/javascript", body=file.read_text())
                else:
                    route.fulfill(status=404, body="")

            pg.route(f"{ORIGIN}/**", serve)
            pg.goto(f"{ORIGIN}/harness.html")
            pg.wait_for_function("window.ready === true")
            yield pg
        finally:
            browser.close()


def tagged(value: Any) -> Any:
    """A Python value as JSON that keeps msgpack's types: floats, big ints and bin are tagged."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 - 1 else {"$int": str(value)}
    if isinstance(value, float):
        text = "Infinity" if value == math.inf else "-Infinity" if value == -math.inf else repr(value)
        return {"$f64": text}
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return value  # already tagged in the vector file
        return {k: tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tagged(v) for v in value]
    raise TypeError(type(value))


def untag_vector(value: Any) -> Any:
    """The vector file's event_json as Python values (bin as bytes)."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: untag_vector(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag_vector(v) for v in value]
    return value


VECTOR_JS = """async ([event, seeds]) => {
  const c = window.canon;
  const ev = c.fromTagged(event);
  const si = c.signingInput(ev);
  const dg = new Uint8Array(await crypto.subtle.digest("SHA-256", si));
  const wire = c.toWire(ev);
  const decoded = c.fromWire(wire);
  const again = c.toWire(decoded);
  const kids = [], sigs = [];
  for (const seedHex of seeds) {
    const pkcs8 = c.fromHex("302e020100300506032b657004220420" + seedHex);
    const key = await crypto.subtle.importKey("pkcs8", pkcs8, {name: "Ed25519"}, true, ["sign"]);
    const jwk = await crypto.subtle.exportKey("jwk", key);
    kids.push("ed25519:" + jwk.x);
    sigs.push(c.toHex(new Uint8Array(await crypto.subtle.sign({name: "Ed25519"}, key, si))));
  }
  return {
    signing_input: c.toHex(si), digest: c.toHex(dg), digest_helper: c.toHex(await c.digest(decoded)),
    wire: c.toHex(wire), again: c.toHex(again), kids, sigs,
  };
}"""


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_vector_case(page: Any, case: dict[str, Any]) -> None:
    event = untag_vector(case["event_json"])
    out = page.evaluate(VECTOR_JS, [tagged(event), case["signer_seeds_hex"]])
    assert out["signing_input"] == case["signing_input_hex"]
    assert out["digest"] == case["digest_hex"]
    assert out["digest_helper"] == case["digest_hex"]
    assert out["wire"] == case["wire_hex"]
    assert out["again"] == case["wire_hex"]
    assert out["kids"] == case["kids"]
    assert out["sigs"] == [s["sig"].hex() for s in event["sigs"]]


def test_vector_wire_decodes_in_js(page: Any) -> None:
    """Decoding each vector's wire bytes and re-encoding them reproduces them exactly."""
    hexes = [c["wire_hex"] for c in VECTORS["cases"]]
    out = page.evaluate(
        "(hexes) => { const c = window.canon; return hexes.map((h) => c.toHex(c.toWire(c.fromWire(c.fromHex(h))))); }",
        hexes,
    )
    assert out == hexes


def _non_canonical() -> list[tuple[str, bytes]]:
    wire = bytes.fromhex(VECTORS["cases"][0]["wire_hex"])
    envelope = msgpack.unpackb(wire, raw=False)
    unsorted = msgpack.packb(dict(reversed(list(envelope.items()))), use_bin_type=True)
    return [
        ("unsorted map keys", msgpack.packb({"b": 1, "a": 2}, use_bin_type=True)),
        ("unsorted envelope", unsorted),
        ("uint8 for a fixint", b"\xcc\x05"),
        ("uint16 for a uint8", b"\xcd\x00\xff"),
        ("int64 for -1", b"\xd3" + (-1).to_bytes(8, "big", signed=True)),
        ("int8 for a negative fixint", b"\xd0\xff"),
        ("float32", b"\xca" + struct.pack(">f", 1.5)),
        ("str8 for a fixstr", b"\xd9\x01a"),
        ("str16 for a short str", b"\xda\x00\x01a"),
        ("bin16 for a short bin", b"\xc5\x00\x01x"),
        ("array16 for a fixarray", b"\xdc\x00\x01\x01"),
        ("map16 for a fixmap", b"\xde\x00\x01\xa1a\x01"),
        ("trailing bytes", canon(1) + b"\x00"),
        ("ext type", b"\xd4\x01\x00"),
        ("timestamp ext", b"\xd6\xff\x00\x00\x00\x01"),
        ("reserved 0xc1", b"\xc1"),
        ("integer map key", b"\x81\x01\x02"),
        ("bin map key", b"\x81\xc4\x01a\x01"),
        ("duplicate key", b"\x82\xa1a\x01\xa1a\x02"),
        ("invalid utf-8", b"\xa2\xff\xfe"),
        ("truncated", b"\xcd\x01"),
        ("empty", b""),
        (
            "vector with a float32 confidence",
            wire.replace(b"\xcb\x3f\xed\xc2\x8f\x5c\x28\xf5\xc3", b"\xca\x3f\x6e\x14\x7b"),
        ),
    ]


def test_js_decoder_rejects_non_canonical(page: Any) -> None:
    cases = _non_canonical()
    for _name, data in cases:
        with pytest.raises(DecodeError):
            decode_canonical(data)  # the Python side refuses it too: the two agree
    out = page.evaluate(
        """(cases) => cases.map(([name, hex]) => {
            try { window.canon.decode(window.canon.fromHex(hex)); return [name, "accepted"]; }
            catch (e) { return [name, e.name]; }
        })""",
        [[name, data.hex()] for name, data in cases],
    )
    assert out == [[name, "CanonError"] for name, _ in cases]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**63, 2**64 - 1]
    ints += [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**53), -(2**63)]
    kinds = ["int", "float", "str", "bin", "none", "bool"] + (["list", "map"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice(ints) if rng.random() < 0.6 else rng.randint(-(2**63), 2**64 - 1)
    if kind == "float":
        return rng.choice([0.0, -0.0, 1.0, 0.5, -2.25, 1e300, 5e-324, math.inf, -math.inf, rng.uniform(-1e6, 1e6)])
    if kind == "str":
        alphabet = "abcXYZ ÄäöüßПриветå日本語🙂\u0000\t"
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 31, 32, 300])))
    if kind == "bin":
        return rng.randbytes(rng.choice([0, 1, 255, 256, 300]))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 15, 16]))]
    keys = ["a", "b", "B", "aa", "Ä", "z", "é", "__proto__", "constructor", "10", "2", "", "日"]
    return {
        rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 8, 16]))
    }  # duplicates collapse


def test_js_matches_python_on_random_values(page: Any) -> None:
    """JS encode(value) == Python canon(value), and JS decode → encode reproduces the bytes."""
    rng = random.Random(20251123)  # noqa: S311 - reproducible test data, not secrets
    values = [_random_value(rng) for _ in range(300)] + [rng.randbytes(70_000), "ü" * 40_000, list(range(70_000))]
    expected = [canon(v).hex() for v in values]
    out = page.evaluate(
        """(items) => items.map(([text, hex]) => {
            const c = window.canon;
            const encoded = c.toHex(c.encode(c.fromTagged(JSON.parse(text))));
            const again = c.toHex(c.encode(c.decode(c.fromHex(hex), Infinity)));
            return [encoded, again];
        })""",
        # as JSON text: JSON.parse keeps a "__proto__" key as data, structured cloning would not
        [[json.dumps(tagged(v)), h] for v, h in zip(values, expected, strict=True)],
    )
    for (encoded, again), want in zip(out, expected, strict=True):
        assert encoded == want
        assert again == want


def test_js_uuidv7_and_kid(page: Any) -> None:
    """Ids the page makes are UUIDv7 strings symbiote accepts, in time order; kids match Python's."""
    from symbiote.bus.ids import is_event_id
    from symbiote.signers.keys import SigningKey

    ids = page.evaluate("() => Array.from({length: 50}, () => window.canon.uuidv7())")
    assert all(is_event_id(i) for i in ids)
    assert all(i[14] == "7" and i[19] in "89ab" for i in ids)
    assert ids == sorted(ids)
    key = SigningKey.from_seed(bytes(range(32)), "user:x")
    raw = key.private.public_key().public_bytes_raw()
    assert page.evaluate("(h) => window.canon.kidOf(window.canon.fromHex(h))", raw.hex()) == key.kid
