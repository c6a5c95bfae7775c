"""OpenAI's legacy Completions (``POST /v1/completions``, JSON and SSE) and Moderations
(``POST /v1/moderations``), in OpenAI's wire format.

Token rule (completions): prompt_tokens is the prompt's tokens as OpenAI bills them, with no
framing: each string prompt (and ``suffix``) encoded with the model's encoding (cl100k_base
for gpt-3.5*, davinci-002 and babbage-002, else o200k_base), each token-id array its length;
completion_tokens is the reply's word count for each choice (``n`` per prompt), summed.
``echo`` puts the prompt before the text; ``logprobs`` adds a logprobs object per choice.
Streams carry usage in a last chunk with empty choices only when
``stream_options.include_usage`` asks for it, as OpenAI's do.

Moderations answer one result per input string (one for an array of parts), nothing flagged,
with no usage: OpenAI reports none, since moderation is free.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson
import tiktoken
from aiohttp import web

from gateway.testing.fake_behaviour import (
    STATE,
    Turn,
    body_response,
    json_response,
    open_turn,
    send_stream,
    wants_stream,
)
from gateway.testing.fake_openai import DONE, openai_error
from gateway.testing.fake_reply import plan_reply

DEFAULT_MAX_TOKENS = 16
CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
              "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions",
              "sexual", "sexual/minors", "violence", "violence/graphic")


@functools.cache
def _encoding(name: str) -> tiktoken.Encoding:
    from gateway.tokens.encodings import load_encoding  # offline, from the bundled BPE file

    return load_encoding(name)


def encoding_for(model: str) -> tiktoken.Encoding:
    cl100k = model.startswith("gpt-3.5") or model in ("davinci-002", "babbage-002")
    return _encoding("cl100k_base" if cl100k else "o200k_base")


def prompts_of(prompt: Any) -> list[str | list[int]]:
    """The prompts of a request: one string, strings, one token array, or token arrays."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    return list(prompt) if isinstance(prompt, list) else []


def count_prompt_tokens(body: dict[str, Any]) -> int:
    encode = encoding_for(str(body.get("model"))).encode_ordinary
    total = sum(len(p) if isinstance(p, list) else len(encode(p))
                for p in prompts_of(body.get("prompt")))
    suffix = body.get("suffix")
    return total + (len(encode(suffix)) if isinstance(suffix, str) else 0)


def _problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "You must provide a model parameter."
    if not prompts_of(body.get("prompt")):
        return "'prompt' must be a string, an array of strings or an array of token ids."
    value = body.get("max_tokens")
    if value is not None and (type(value) is not int or value < 1):
        return "'max_tokens' must be a positive integer."
    return None


def _logprobs(pieces: list[str], top: int) -> dict[str, Any]:
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return {"tokens": pieces, "token_logprobs": [-0.1] * len(pieces),
            "top_logprobs": [{p: -0.1} for p in pieces] if top else None,
            "text_offset": offsets}


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``."""
    turn = await open_turn(request, openai_error)
    if not isinstance(turn, Turn):
        return turn
    problem = _problem(turn.body)
    if problem is not None:
        return openai_error(400, problem)
    body, behaviour = turn.body, turn.behaviour
    state = request.app[STATE]
    limit = body.get("max_tokens") or DEFAULT_MAX_TOKENS
    reply = plan_reply(behaviour, state.reply_tokens, limit)
    prompts = prompts_of(body["prompt"])
    per_prompt = body.get("n") or 1
    choices = len(prompts) * per_prompt
    usage = None
    if not behaviour.get("no_usage"):
        completion = len(reply.words) * choices
        prompt = count_prompt_tokens(body)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
    head = {"id": state.next_id("cmpl-fake-"), "object": "text_completion",
            "created": int(time.time()), "model": body["model"]}
    top = body.get("logprobs")

    def echo(i: int) -> str:
        source = prompts[i // per_prompt]
        return source if body.get("echo") is True and isinstance(source, str) else ""

    if wants_stream(body, behaviour):
        options = body.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        return await _stream(request, head, reply.pieces(), reply.finish, choices,
                             usage if asked else None, behaviour, echo, top)
    answer = {**head, "system_fingerprint": "fp_fake", "choices": [
        {"text": echo(i) + reply.text, "index": i,
         "logprobs": _logprobs(reply.pieces(), top) if isinstance(top, int) else None,
         "finish_reason": reply.finish} for i in range(choices)]}
    if usage is not None:
        answer["usage"] = usage
    return body_response(answer, behaviour)


async def _stream(request: web.Request, head: dict[str, Any], pieces: list[str], finish: str,
                  choices: int, usage: dict[str, Any] | None, behaviour: dict[str, Any],
                  echo: Any, top: Any) -> web.StreamResponse:
    def chunk(i: int, text: str, reason: str | None) -> bytes:
        logprobs = _logprobs([text], top) if isinstance(top, int) and text else None
        choice = {"text": text, "index": i, "logprobs": logprobs, "finish_reason": reason}
        return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

    opening = [chunk(i, echo(i), None) for i in range(choices) if echo(i)]
    content = [chunk(i, piece, None) for piece in pieces for i in range(choices)]
    closing = [chunk(i, "", finish) for i in range(choices)]
    if usage is not None:
        closing.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage})
                       + b"\n\n")
    closing.append(DONE)
    return await send_stream(request, behaviour, opening=opening, content=content,
                             closing=closing, garbage=b"data: {not json\n\n")


async def moderations(request: web.Request) -> web.StreamResponse:
    """``POST /v1/moderations``."""
    turn = await open_turn(request, openai_error)
    if not isinstance(turn, Turn):
        return turn
    body = turn.body
    value = body.get("input") if isinstance(body, dict) else None
    if isinstance(value, str):
        inputs = 1
    elif isinstance(value, list) and value:
        inputs = 1 if all(isinstance(v, dict) for v in value) else len(value)
    else:
        return openai_error(400, "'input' must be a string, an array of strings or an array "
                                 "of input parts.")
    model = body.get("model") or "omni-moderation-latest"
    result = {"flagged": False, "categories": dict.fromkeys(CATEGORIES, False),
              "category_scores": dict.fromkeys(CATEGORIES, 0.0001)}
    if model.startswith("omni"):
        result["category_applied_input_types"] = {c: ["text"] for c in CATEGORIES}
    answer = {"id": request.app[STATE].next_id("modr-fake-"), "model": model,
              "results": [result] * inputs}
    return json_response(answer) if not turn.behaviour else body_response(answer,
                                                                          turn.behaviour)
