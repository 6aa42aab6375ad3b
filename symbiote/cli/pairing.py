"""``symbiote keys pair --name NAME``: pair a phone as ``user:NAME`` with a one-time code.

The command writes a pairing ticket into the data dir (the API reads and removes it), then
prints the code, the page's URL with the code and the TLS certificate's fingerprint, and the
same URL as a QR code. By default it waits until the phone has paired or the code expired;
Ctrl-C cancels the code.
"""

from __future__ import annotations

import io
import ipaddress
import signal
import threading
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer

from symbiote.api.pairing import DEFAULT_TTL_S, PairingStore, pairing_url, valid_name
from symbiote.api.tls import fingerprint_of, format_fingerprint, lan_addresses, load_certificate
from symbiote.errors import ConfigError
from symbiote.home import DataDir

__all__ = ["phone_base_url", "qr_text", "register"]


def qr_text(data: str) -> str:
    """``data`` as a QR code drawn with Unicode half blocks (two modules a character line)."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(data)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def phone_base_url(url: str) -> tuple[str, str | None]:
    """The API URL a phone can open, and a warning if the phone probably cannot reach it.

    A wildcard host (``0.0.0.0``) becomes this machine's LAN address; a loopback host is
    kept, with a warning.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    warning = None
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - recognizing the wildcard, not binding it
        addresses = lan_addresses()
        if addresses:
            host = addresses[0]
        else:
            host, warning = "127.0.0.1", "no LAN address found; the phone must reach this computer some other way"
    else:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            warning = f"the API listens on {host} only, which a phone cannot reach; start it on a LAN address"
    shown = f"[{host}]" if ":" in host else host
    return urlunsplit(("https", f"{shown}{port}", "", "", "")), warning


def register(keys_app: typer.Typer) -> None:
    """Add the ``pair`` command to ``symbiote keys``."""

    @keys_app.command("pair")
    def pair(
        name: Annotated[str, typer.Option("--name", help="Who the phone belongs to: it signs as user:NAME")],
        url: Annotated[
            str | None,
            typer.Option("--url", help="The API's https:// URL as the phone sees it (default: the runtime's)"),
        ] = None,
        ttl: Annotated[
            int, typer.Option("--ttl", help="Seconds the code stays valid", min=30, max=3600)
        ] = DEFAULT_TTL_S,
        wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the phone has paired")] = True,
        qr: Annotated[bool, typer.Option("--qr/--no-qr", help="Print the URL as a QR code")] = True,
        data_dir: Annotated[
            Path | None,
            typer.Option("--data-dir", help="Data directory (default $SYMBIOTE_DATA_DIR or ~/.local/share/symbiote)"),
        ] = None,
    ) -> None:
        """Print a one-time code, URL and QR code that pair a phone as user:NAME (valid 10 minutes, once)."""
        from symbiote.cli.common import _home, console, err, plain, print_error

        home = _home(data_dir)
        if not valid_name(name):
            err.print("[red]error:[/red] NAME must be lower-case letters, digits, '_', '.' or '-' (at most 63)")
            raise typer.Exit(2)
        try:
            base, fingerprint = _api_address(home, url)
        except ConfigError as exc:
            print_error(exc)
            raise typer.Exit(1) from exc
        base, warning = phone_base_url(base)
        store = PairingStore(home.root)
        code, ticket = store.create(f"user:{name}", ttl)
        link = pairing_url(base, code, fingerprint, ticket.principal)
        # plain echo, not rich: the code, link and fingerprint must come out exactly, without
        # highlighting or wrapping, so that they can be copied
        typer.echo(f"\nPair a phone as user:{name}")
        typer.echo(f"  code:        {code}   (works once, for {ttl // 60} min {ttl % 60} s)")
        typer.echo(f"  open:        {link}")
        typer.echo(f"  certificate: SHA-256 {format_fingerprint(fingerprint)}")
        typer.echo(
            "  The browser will warn about the self-signed certificate: continue only if its fingerprint matches."
        )
        if warning:
            err.print(f"[yellow]warning:[/yellow] {plain(warning)}")
        if qr:
            typer.echo(qr_text(link))
        if not wait:
            return
        claimed_at: float | None = None
        try:
            _interrupt_on_stop_signals()  # closing the terminal, or `kill`, cancels the code as Ctrl-C does
            console.print("Waiting for the phone… (Ctrl-C cancels the code)")
            while True:
                receipt = store.take_receipt(code)
                if receipt is not None:
                    paired = f"{receipt.get('principal')} with key {receipt.get('kid')}"
                    console.print(f"[green]paired:[/green] {plain(paired)}")
                    return
                now = time.time() * 1000
                if not store.exists(code):
                    # claimed: the API writes the receipt as soon as the key is registered
                    claimed_at = claimed_at or now
                    if now - claimed_at > 15_000:
                        err.print("[red]the code was used, but the key registration was not confirmed[/red]")
                        raise typer.Exit(1)
                elif now >= ticket.expires_at:
                    err.print("[red]the code expired[/red] before a phone used it")
                    raise typer.Exit(1)
                time.sleep(0.3)
        except KeyboardInterrupt:
            err.print("cancelled; the code no longer works")
            raise typer.Exit(130) from None
        finally:
            store.cancel(code)


def _interrupt_on_stop_signals() -> None:
    """SIGTERM and SIGHUP (unless ignored, as under nohup) stop the wait as Ctrl-C does, so the
    code is cancelled on the way out. Only SIGKILL leaves it: it then works until it expires."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (a test may run the command in another)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, interrupt)


def _api_address(home: DataDir, url: str | None) -> tuple[str, str]:
    """The API's base URL (``--url`` or the runtime's) and its certificate fingerprint (hex)."""
    runtime = home.read_runtime()
    base = url or (runtime or {}).get("api_url")
    if not base:
        why = "the running runtime has none (started with --no-api)" if runtime else "the runtime is not up"
        raise ConfigError(
            f"the API is not running: {why}; start `symbiote up` with it (or pass --url)", data_dir=str(home.root)
        )
    if not str(base).startswith("https://"):
        raise ConfigError("the API URL must be https://", url=base)
    return str(base), fingerprint_of(load_certificate(home.tls_dir))
