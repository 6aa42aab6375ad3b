"""Runs one dispatcher in its own process (the restart tests kill it with SIGKILL)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from symbiote.bus.stream import Bus
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.home import DataDir
from symbiote.logs import configure_logging


async def main(nats_url: str, data_dir: str) -> None:
    configure_logging("warning", json=True)  # logs go to stderr; stdout carries only "ready"
    home = DataDir(Path(data_dir))
    bus = await Bus.connect(nats_url)
    async with Dispatcher(bus, home.load_key("runtime"), Executors(home.workspaces_dir)):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
