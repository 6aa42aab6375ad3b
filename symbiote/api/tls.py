"""The API's self-signed TLS certificate: created once under ``DataDir.tls_dir``, reused after.

The phone page needs a secure context (HTTPS) for WebCrypto, so the API always serves TLS.
The certificate is self-signed (ECDSA P-256, which every browser accepts) with subject
alternative names for ``localhost``, the host name, the loopback addresses and the host's
LAN addresses. Nobody vouches for it: people compare its SHA-256 fingerprint, which the
pairing URL carries, with what their browser shows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from symbiote.errors import ConfigError
from symbiote.files import write_private

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "TlsMaterial",
    "ensure_certificate",
    "fingerprint_of",
    "format_fingerprint",
    "lan_addresses",
    "load_certificate",
]

log = structlog.get_logger("symbiote.api")

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
_VALID_DAYS = 825
_RENEW_BEFORE = dt.timedelta(days=7)


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the certificate and its key, and the certificate's SHA-256 fingerprint (hex)."""

    cert_path: Path
    key_path: Path
    fingerprint: str

    @property
    def fingerprint_colons(self) -> str:
        """The fingerprint as browsers show it: ``AB:CD:…``."""
        return format_fingerprint(self.fingerprint)


def format_fingerprint(hex_digest: str) -> str:
    """``abcd…`` → ``AB:CD:…`` (the form certificate viewers display)."""
    text = hex_digest.replace(":", "").upper()
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


def fingerprint_of(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, lower-case hex without separators."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def lan_addresses() -> list[str]:
    """IPv4 addresses of this host other than loopback, best effort (read locally; nothing is sent)."""
    found = _kernel_local_addresses()
    try:
        found += [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError as exc:
        log.debug("tls.hostname_unresolved", error=str(exc))
    unique: list[str] = []
    for address in found:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local) and address not in unique:
            unique.append(address)
    return unique


def _kernel_local_addresses(path: Path = Path("/proc/net/fib_trie")) -> list[str]:
    """The host's own IPv4 addresses from the kernel's routing trie (Linux): the ``/32 host LOCAL`` leaves."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        log.debug("tls.no_fib_trie", error=str(exc))
        return []
    found: list[str] = []
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL":
            found.append(previous.strip().removeprefix("|-- ").strip())
    return found


def load_certificate(tls_dir: Path) -> x509.Certificate:
    """The certificate stored in ``tls_dir``; :class:`ConfigError` if there is none readable."""
    path = tls_dir / CERT_FILE
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError("no readable API certificate; start the API once to create it", path=str(path)) from exc


def ensure_certificate(tls_dir: Path, hosts: Iterable[str] = ()) -> TlsMaterial:
    """Return the certificate in ``tls_dir``, creating it (and its key, mode 0600) if missing or expiring.

    ``hosts`` are extra names or IP addresses to cover when a new certificate is made; an
    existing valid certificate is kept even if it does not cover them, so its fingerprint
    stays what paired phones were shown.
    """
    cert_path, key_path = tls_dir / CERT_FILE, tls_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        cert = load_certificate(tls_dir)
        if cert.not_valid_after_utc - _RENEW_BEFORE > dt.datetime.now(dt.UTC):
            return TlsMaterial(cert_path, key_path, fingerprint_of(cert))
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, hosts)
    write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return TlsMaterial(cert_path, key_path, fingerprint_of(cert))


def _self_signed(key: ec.EllipticCurvePrivateKey, hosts: Iterable[str]) -> x509.Certificate:
    hostname = socket.gethostname() or "localhost"
    dns = ["localhost", hostname]
    if "." not in hostname:
        dns.append(f"{hostname}.local")
    ips = ["127.0.0.1", "::1", *lan_addresses()]
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host and host not in dns:
                dns.append(host)
            continue
        if not ip.is_unspecified and host not in ips:
            ips.append(host)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ips)]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"symbiote on {hostname}"[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "symbiote (self-signed)"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
