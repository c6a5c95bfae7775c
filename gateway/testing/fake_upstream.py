"""A fake OpenAI-compatible upstream for the gateway's tests, benchmark and demo mode.

Deterministic token rule, so tests can assert exact usage numbers:

* The reply is N words ``w1 w2 ... wN`` (or the scripted ``reply`` split on spaces);
  each word is exactly one completion token.
* N = min(max_completion_tokens, else max_tokens, when given; reply_tokens). finish_reason
  is "length" when that limit cut the reply short, else "stop".
* prompt_tokens is what OpenAI bills for an o200k model (tiktoken, offline): 3 per message
  plus its encoded role, name (+1) and text parts, plus 3 priming the reply.
* cached_tokens is 0 unless scripted (and is clamped to prompt_tokens).

Scripting: ``POST /_fake/script`` with a JSON list of behaviour objects queues them; each
chat request pops one (FIFO), an empty queue means default behaviour. Fields (all optional):
status, retry_after, delay_ms, chunk_delay_ms, hang, drop, body ("garbage" | "truncated" |
"empty"), stream_cut_after, stream_garbage, no_usage, reply, reply_tokens, cached_tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import tiktoken
from aiohttp import web

LOG_SIZE = 200
HANG_SECONDS = 300.0
JSON_TYPE = "application/json"
BODY_MODES = ("garbage", "truncated", "empty")
# Allowed JSON types per behaviour field; unknown fields are rejected so typos fail loudly.
BEHAVIOUR_FIELDS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("status", "stream_cut_after", "reply_tokens", "cached_tokens"), (int,)),
    **dict.fromkeys(("retry_after", "delay_ms", "chunk_delay_ms"), (int, float)),
    **dict.fromkeys(("hang", "drop", "stream_garbage", "no_usage"), (bool,)),
    **dict.fromkeys(("body", "reply"), (str,)),
}
FINGERPRINT = {"service_tier": "default", "system_fingerprint": "fp_fake"}
_DETAILS = "reasoning_tokens audio_tokens accepted_prediction_tokens rejected_prediction_tokens"
COMPLETION_DETAILS = dict.fromkeys(_DETAILS.split(), 0)


class FakeUpstreamState:
    """Defaults, the scripted behaviour queue and the request log of one fake upstream."""

    def __init__(self, *, delay_ms: float, chunk_delay_ms: float, reply_tokens: int) -> None:
        self.delay_ms = delay_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.reply_tokens = reply_tokens
        self.script: deque[dict[str, Any]] = deque()
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self.received = 0
        self._last_id = 0

    def next_id(self) -> str:
        self._last_id += 1
        return f"chatcmpl-fake-{self._last_id}"


STATE = web.AppKey("fake_upstream_state", FakeUpstreamState)


@functools.cache
def _o200k() -> tiktoken.Encoding:
    from gateway.tokens.encodings import load_encoding  # offline, from the bundled BPE file

    return load_encoding("o200k_base")


def count_prompt_tokens(messages: list[Any]) -> int:
    """Prompt tokens as OpenAI bills them for o200k models: 3 per message, its role, name
    and text encoded (text parts only), 1 more for a name, 3 to prime the reply."""
    encode = _o200k().encode_ordinary
    total = 3
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += 3
        for key in ("role", "name"):
            if isinstance(message.get(key), str):
                total += len(encode(message[key])) + (key == "name")
        content = message.get("content")
        if isinstance(content, str):
            total += len(encode(content))
        elif isinstance(content, list):
            total += sum(
                len(encode(part["text"]))
                for part in content
                if isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            )
    return total


def usage_object(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> dict[str, Any]:
    """An OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": dict(COMPLETION_DETAILS),
    }


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON_TYPE)


def _scripted_error(status: int, retry_after: float | None) -> web.Response:
    if status == 429:
        resp = _error(429, "Rate limit reached (fake).", "rate_limit_error", "rate_limit_exceeded")
    elif status >= 500:
        resp = _error(status, "The server had an error (fake).", "server_error")
    else:
        resp = _error(status, f"Scripted error {status} (fake).", "invalid_request_error")
    if retry_after is not None:
        value = float(retry_after)
        resp.headers["Retry-After"] = str(int(value)) if value.is_integer() else str(value)
    return resp


def _request_problem(body: Any) -> str | None:
    """Why a chat request is invalid, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "You must provide a model parameter."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array."
    if not all(isinstance(m, dict) for m in messages):
        return "Each entry of 'messages' must be an object."
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        # bool is an int subclass; OpenAI rejects it, and so do we.
        if value is not None and (type(value) is not int or value < 1):
            return f"'{key}' must be a positive integer."
    return None


def _behaviour_problem(item: Any) -> str | None:
    """Why a scripted behaviour object is invalid, or None."""
    if not isinstance(item, dict):
        return "each behaviour must be an object"
    for key, value in item.items():
        types = BEHAVIOUR_FIELDS.get(key)
        if types is None:
            return f"unknown behaviour field {key!r}"
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"behaviour field {key!r} has the wrong type"
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            return f"behaviour field {key!r} must not be negative"
    if "status" in item and not 400 <= item["status"] <= 599:
        return "status must be within 400..599"
    if "body" in item and item["body"] not in BODY_MODES:
        return f"body must be one of {', '.join(BODY_MODES)}"
    return None


async def _hang(request: web.Request) -> None:
    # Poll instead of relying on handler cancellation, which aiohttp runners disable by
    # default: once the client goes away aiohttp drops the request's transport.
    deadline = time.monotonic() + HANG_SECONDS
    while request.transport is not None and not request.transport.is_closing():
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.05)


def _close_connection(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    # close() (not abort()) so already written stream events reach the client first. The
    # returned response can then not be finished; aiohttp treats that as a quiet disconnect.
    if request.transport is not None:
        request.transport.close()
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    state = request.app[STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    state.received += 1
    # Headers are kept as aiohttp's read-only proxy (case-insensitive lookups); turning them
    # into a plain dict waits until someone reads the log, off the hot path.
    state.log.append(
        {"method": request.method, "path": request.path, "headers": request.headers, "body": body}
    )
    behaviour = state.script.popleft() if state.script else {}

    delay_ms = behaviour.get("delay_ms", state.delay_ms)
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    if behaviour.get("hang"):
        await _hang(request)
        return _error(504, "Fake upstream hang expired.", "server_error")
    if behaviour.get("drop"):
        return _close_connection(request, web.Response())
    if "status" in behaviour:
        return _scripted_error(behaviour["status"], behaviour.get("retry_after"))
    problem = _request_problem(body)
    if problem is not None:
        return _error(400, problem, "invalid_request_error")

    if "reply" in behaviour:
        words = behaviour["reply"].split()
    else:
        n = behaviour.get("reply_tokens", state.reply_tokens)
        words = [f"w{i}" for i in range(1, n + 1)]
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    finish_reason = "stop"
    if limit is not None and limit < len(words):
        words = words[:limit]
        finish_reason = "length"
    usage = None
    if not behaviour.get("no_usage"):
        prompt_tokens = count_prompt_tokens(body["messages"])
        cached = min(behaviour.get("cached_tokens", 0), prompt_tokens)
        usage = usage_object(prompt_tokens, len(words), cached)
    head = {
        "id": state.next_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
    }

    body_mode = behaviour.get("body")
    if body.get("stream") is True and body_mode is None:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            usage = None
        chunk_delay = behaviour.get("chunk_delay_ms", state.chunk_delay_ms) / 1000
        return await _stream(request, head, words, finish_reason, usage, behaviour, chunk_delay)

    message = {"role": "assistant", "content": " ".join(words), "refusal": None, "annotations": ()}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    completion = {**head, "choices": [choice], **FINGERPRINT}
    if usage is not None:
        completion["usage"] = usage
    payload = orjson.dumps(completion)
    if body_mode == "garbage":
        payload = b"<html>upstream exploded</html>"
    elif body_mode == "truncated":
        payload = payload[: len(payload) // 2]
    elif body_mode == "empty":
        payload = b""
    return web.Response(body=payload, content_type=JSON_TYPE)


async def _stream(
    request: web.Request,
    head: dict[str, Any],
    words: list[str],
    finish_reason: str,
    usage: dict[str, Any] | None,
    behaviour: dict[str, Any],
    chunk_delay: float,
) -> web.StreamResponse:
    """Send the reply as SSE chunks; ``usage`` is None unless a usage chunk is due."""
    base = {**head, "object": "chat.completion.chunk", **FINGERPRINT}
    if usage is not None:
        # OpenAI adds "usage": null to every chunk once include_usage is requested.
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    sent = 0

    async def emit(data: bytes) -> None:
        nonlocal sent
        if chunk_delay and sent:
            await asyncio.sleep(chunk_delay)
        sent += 1
        await resp.write(data)

    cut_after = behaviour.get("stream_cut_after")
    try:
        if behaviour.get("stream_garbage"):
            await emit(b"data: {not json\n\n")
        await emit(chunk({"role": "assistant", "content": "", "refusal": None}))
        last = len(words) - 1
        for i, word in enumerate(words):
            if cut_after is not None and i >= cut_after:
                return _close_connection(request, resp)
            await emit(chunk({"content": word if i == last else word + " "}))
        if cut_after is not None:  # the cut point lies past the last content event
            return _close_connection(request, resp)
        await emit(chunk({}, finish_reason))
        if usage is not None:
            await emit(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await emit(b"data: [DONE]\n\n")
    except ConnectionResetError:
        pass  # the client went away mid-stream; nothing left to do
    return resp


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=JSON_TYPE)


async def post_script(request: web.Request) -> web.Response:
    """``POST /_fake/script``: queue behaviours (a list, or a single object)."""
    try:
        items = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json({"error": "body must be JSON"}, 400)
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return _json({"error": "body must be a list of behaviour objects"}, 400)
    for item in items:
        problem = _behaviour_problem(item)
        if problem is not None:
            return _json({"error": problem}, 400)
    script = request.app[STATE].script
    script.extend(items)
    return _json({"queued": len(script)})


async def delete_script(request: web.Request) -> web.Response:
    """``DELETE /_fake/script``: drop all queued behaviours."""
    request.app[STATE].script.clear()
    return _json({"queued": 0})


async def get_requests(request: web.Request) -> web.Response:
    """``GET /_fake/requests``: the received counter and the last requests."""
    state = request.app[STATE]
    requests = [
        {**entry, "headers": {str(k): v for k, v in entry["headers"].items()}}
        for entry in state.log
    ]
    return _json({"count": state.received, "requests": requests})


async def delete_requests(request: web.Request) -> web.Response:
    """``DELETE /_fake/requests``: reset the counter and the log."""
    state = request.app[STATE]
    state.received = 0
    state.log.clear()
    return _json({"count": 0, "requests": []})


async def health(request: web.Request) -> web.Response:
    """``GET /_fake/health``."""
    return _json({"ok": True})


def build_app(
    *, delay_ms: float = 0, chunk_delay_ms: float = 0, reply_tokens: int = 12
) -> web.Application:
    """The fake upstream as an aiohttp application."""
    # Large prompts are legitimate test input; aiohttp's default cap is 1 MiB.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = FakeUpstreamState(
        delay_ms=delay_ms, chunk_delay_ms=chunk_delay_ms, reply_tokens=reply_tokens
    )
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/_fake/script", post_script)
    app.router.add_delete("/_fake/script", delete_script)
    app.router.add_get("/_fake/requests", get_requests)
    app.router.add_delete("/_fake/requests", delete_requests)
    app.router.add_get("/_fake/health", health)
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
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream.")
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
