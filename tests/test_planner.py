"""The LLM planner path against a scripted OpenAI-compatible server (a real HTTP server)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request

from symbiote.agents import Agent, OpenAIPlanner
from symbiote.bus.envelope import from_wire, make_event
from symbiote.registry import default_definitions
from symbiote.signers.keys import sign_event
from tests.helpers import World

pytestmark = pytest.mark.timeout(60)


def scripted_llm(answers: dict[str, str], seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        payload = await request.json()
        seen.append(payload)
        asked = json.loads(payload["messages"][-1]["content"])["request"]
        content = answers.get(asked, "I do not know")
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": payload["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        }

    return app


@pytest_asyncio.fixture
async def llm() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    answers = {
        "please greet the team": '{"command": "echo", "args": {"text": "hello team"}, "confidence": 0.95}',
        "do something weird": '```json\n{"command": "echo", "args": {"text": "x"}, "confidence": 0.1}\n```',
    }
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(scripted_llm(answers, seen), log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", seen
    finally:
        server.should_exit = True
        await task


async def test_planner_parses_and_tolerates_bad_answers(llm: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = llm
    planner = OpenAIPlanner(url, "scripted")
    commands = default_definitions()
    plan = await planner.plan("please greet the team", commands, ["earlier: echo hi"])
    assert plan is not None and (plan.command, plan.args, plan.confidence) == ("echo", {"text": "hello team"}, 0.95)
    sent = json.loads(seen[-1]["messages"][-1]["content"])
    assert [c["name"] for c in sent["commands"]] == ["echo", "note.write", "shell.run"]
    assert sent["recent_memory"] == ["earlier: echo hi"]
    assert (await planner.plan("do something weird", commands, [])).confidence == 0.1  # type: ignore[union-attr]
    assert await planner.plan("unknown", commands, []) is None
    assert await OpenAIPlanner("http://127.0.0.1:9/v1", "m", timeout_s=1).plan("x", commands, []) is None


async def test_agent_uses_the_planner_and_falls_back(world: World, llm: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = llm
    async with Agent(world.bus, world.agent, planner=OpenAIPlanner(url, "scripted")):
        for text in ("please greet the team", "echo fallback"):
            source = sign_event(make_event("input.text", world.user.principal, {"text": text}), world.user)
            await world.bus.publish(source)
        found: dict[str, Any] = {}
        for _ in range(100):
            async for msg in world.bus.read("sym.cmd.*.proposed"):
                event = from_wire(msg.data)
                found[event.body["args"]["text"]] = event.body
            if len(found) == 2:
                break
            await asyncio.sleep(0.1)
    assert found["hello team"]["confidence"] == 0.95, "the planner's proposal"
    assert found["fallback"]["command"] == "echo", "the model knew nothing: intent matching decided"
