"""A fake LLM provider for the gateway's tests, benchmark and demo mode: one server, one base
URL, every provider's real wire format on its own path.

Routes (one module each):

* ``POST /v1/chat/completions``: OpenAI Chat Completions, JSON and SSE; Mistral uses the
  same path and shape (``fake_openai``).
* ``POST /v1/completions`` (JSON and SSE) and ``/v1/moderations``: OpenAI's legacy
  completions and moderations (``fake_openai_legacy``).
* ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``: Azure OpenAI
  (``fake_openai``).
* ``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic (``fake_anthropic``).
* ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent`` (``?alt=sse``)
  and ``:countTokens``: Google Gemini (``fake_gemini``).
* ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}`` and its ``/input_items``:
  OpenAI's Responses API (``fake_openai_responses``).
* ``POST /v2/chat``: Cohere Chat v2 (``fake_cohere``).
* Embeddings: ``POST /v1/embeddings`` (OpenAI, Mistral), Azure's
  ``/openai/deployments/{deployment}/embeddings``, Gemini's ``:embedContent`` and
  ``:batchEmbedContents``, Cohere's ``/v2/embed`` (``fake_embeddings``).
* ``/_fake/script``, ``/_fake/requests``, ``/_fake/health``: control (``fake_control``).

Every provider route shares one scripted behaviour queue, one request log and one
deterministic reply (``fake_reply``): N words ``w1 w2 ... wN``, one token each, N = min(the
output token limit asked for, ``reply_tokens``), ending "length" (in each provider's words)
when that limit cut it. Each module's docstring gives its input token rule.

Scripting: ``POST /_fake/script`` with a JSON list of behaviour objects queues them; each
generating request (any provider) pops one (FIFO), an empty queue means default behaviour.
Fields (all optional): status (answered in the provider's error shape), retry_after,
delay_ms, chunk_delay_ms, hang, drop, body ("garbage" | "truncated" | "empty"),
stream_cut_after, stream_garbage, no_usage, reply, reply_tokens, cached_tokens.
``GET /_fake/requests`` lists the last requests (method, path, query, headers, body).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable

from aiohttp import web

from gateway.testing import (
    fake_anthropic,
    fake_cohere,
    fake_control,
    fake_embeddings,
    fake_openai,
    fake_openai_legacy,
    fake_openai_responses,
)
from gateway.testing.fake_behaviour import STATE, FakeUpstreamState
from gateway.testing.fake_openai import count_prompt_tokens, usage_object

__all__ = [
    "STATE",
    "FakeUpstreamState",
    "build_app",
    "count_prompt_tokens",
    "main",
    "start_fake_upstream",
    "usage_object",
]


def build_app(
    *, delay_ms: float = 0, chunk_delay_ms: float = 0, reply_tokens: int = 12
) -> web.Application:
    """The fake upstream as an aiohttp application."""
    # Large prompts are legitimate test input; aiohttp's default cap is 1 MiB.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = FakeUpstreamState(
        delay_ms=delay_ms, chunk_delay_ms=chunk_delay_ms, reply_tokens=reply_tokens
    )
    router = app.router
    router.add_post("/v1/chat/completions", fake_openai.chat_completions)
    router.add_post(
        "/openai/deployments/{deployment}/chat/completions", fake_openai.azure_chat_completions
    )
    router.add_post("/v1/completions", fake_openai_legacy.completions)
    router.add_post("/v1/moderations", fake_openai_legacy.moderations)
    router.add_post("/v1/messages", fake_anthropic.messages)
    router.add_post("/v1/messages/count_tokens", fake_anthropic.count_tokens)
    # {model}:{method}: generation and countTokens (fake_gemini), embeddings (fake_embeddings)
    router.add_post("/v1beta/models/{target}", fake_embeddings.gemini_models_action)
    router.add_post("/v2/chat", fake_cohere.chat)
    router.add_post("/v1/embeddings", fake_embeddings.embeddings)
    router.add_post(
        "/openai/deployments/{deployment}/embeddings", fake_embeddings.azure_embeddings
    )
    router.add_post("/v2/embed", fake_embeddings.cohere_embed)
    app[fake_openai_responses.STORED] = {}
    router.add_post("/v1/responses", fake_openai_responses.create)
    router.add_get("/v1/responses/{id}", fake_openai_responses.retrieve)
    router.add_delete("/v1/responses/{id}", fake_openai_responses.delete)
    router.add_get("/v1/responses/{id}/input_items", fake_openai_responses.input_items)
    router.add_post("/_fake/script", fake_control.post_script)
    router.add_delete("/_fake/script", fake_control.delete_script)
    router.add_get("/_fake/requests", fake_control.get_requests)
    router.add_delete("/_fake/requests", fake_control.delete_requests)
    router.add_get("/_fake/health", fake_control.health)
    return app


async def start_fake_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    delay_ms: float = 0,
    chunk_delay_ms: float = 0,
    reply_tokens: int = 12,
) -> tuple[web.AppRunner, str]:
    """Serve the fake in the running loop; returns the runner and the ``.../v1`` base URL."""
    app = build_app(delay_ms=delay_ms, chunk_delay_ms=chunk_delay_ms, reply_tokens=reply_tokens)
    # A short shutdown timeout so cleanup() is not held up by a scripted hang.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port = runner.addresses[0][1]
    url_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in url_host:
        url_host = f"[{url_host}]"
    return runner, f"http://{url_host}:{bound_port}/v1"


async def _serve(args: argparse.Namespace) -> None:
    # Handlers go in first: whoever reads the "listening" line may signal us right away.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # The CLI options are named exactly like start_fake_upstream's parameters.
    runner, url = await start_fake_upstream(**vars(args))
    print(f"fake upstream listening on {url.removesuffix('/v1')}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Fake LLM provider upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0)
    parser.add_argument("--reply-tokens", type=int, default=12)
    args = parser.parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
