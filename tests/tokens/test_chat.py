"""Chat accounting against OpenAI's worked examples (the tiktoken cookbook)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.tokens.models import ModelTokenizers, TokenConfigError
from gateway.tokens.service import TokenService

# "How to count tokens with tiktoken", section 6: the cookbook reports 129 prompt tokens from
# the API for gpt-3.5-turbo and gpt-4, 124 for gpt-4o and gpt-4o-mini.
JARGON = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
                                  "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user",
     "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user",
     "content": "Let's circle back when we have more bandwidth to touch base on "
                "opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean "
                                "for the client deliverable."},
]
# Section 7: with one function tool, 105 for gpt-3.5-turbo and gpt-4, 101 for gpt-4o(-mini).
WEATHER_TOOLS = [{"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string",
                     "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "description": "The unit of temperature to return",
                 "enum": ["celsius", "fahrenheit"]}}}}}]
WEATHER = [
    {"role": "system",
     "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-4o", 124),
    ("gpt-4o-mini", 124), ("gpt-4o-mini-2024-07-18", 124)])
async def test_cookbook_messages(service: TokenService, model: str, expected: int) -> None:
    counted = await service.count_chat({"messages": JARGON}, model)
    assert (counted.tokens, counted.exact) == (expected, True)


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)])
async def test_cookbook_tools(service: TokenService, model: str, expected: int) -> None:
    counted = await service.count_chat({"messages": WEATHER, "tools": WEATHER_TOOLS}, model)
    assert (counted.tokens, counted.exact) == (expected, True)


async def test_multi_part_text_counts_like_plain_text(service: TokenService) -> None:
    plain = {"messages": [{"role": "user", "content": "Describe this picture in detail"}]}
    parts = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe this picture"},
        {"type": "text", "text": " in detail"}]}]}
    a = await service.count_chat(plain, "gpt-4o")
    b = await service.count_chat(parts, "gpt-4o")
    assert b.exact and abs(a.tokens - b.tokens) <= 1  # split text may tokenize at the seam


async def test_images_and_tool_calls_make_an_estimate(service: TokenService) -> None:
    with_image = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    counted = await service.count_chat(with_image, "gpt-4o")
    assert not counted.exact and counted.tokens > 85
    with_call = {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "f", "arguments": '{"x": 1}'}}]}]}
    assert not (await service.count_chat(with_call, "gpt-4o")).exact


async def test_special_tokens_in_prompts_are_text(service: TokenService) -> None:
    body = {"messages": [{"role": "user", "content": "<|endoftext|><|im_start|>"}]}
    counted = await service.count_chat(body, "gpt-4o")
    assert counted.exact and counted.tokens > 3 + 3 + 1


async def test_estimates_scale_the_o200k_count_and_round_up(service: TokenService) -> None:
    exact = await service.count_chat({"messages": JARGON}, "gpt-4o")
    claude = await service.count_chat({"messages": JARGON}, "claude-sonnet-4-5")
    assert not claude.exact and claude.factor == Decimal("1.20")
    assert claude.tokens == -(-exact.tokens * 12 // 10)
    unknown = await service.count_chat({"messages": JARGON}, "some-local-llama")
    assert not unknown.exact and unknown.encoding == "o200k_base"


async def test_chat_upper_bound_is_a_ceiling(service: TokenService) -> None:
    for body, model in (({"messages": JARGON}, "gpt-4o"),
                        ({"messages": WEATHER, "tools": WEATHER_TOOLS}, "gpt-4"),
                        ({"messages": JARGON}, "claude-sonnet-4-5")):
        assert service.chat_upper_bound(body, model) >= (await service.count_chat(
            body, model)).tokens


@pytest.mark.parametrize(("model", "encoding", "exact"), [
    ("gpt-5", "o200k_base", True), ("gpt-5-mini-2025-08-07", "o200k_base", True),
    ("gpt-4.1-nano", "o200k_base", True), ("o3-mini", "o200k_base", True),
    ("o4-mini", "o200k_base", True), ("gpt-4-turbo-2024-04-09", "cl100k_base", True),
    ("gpt-4", "cl100k_base", True), ("gpt-3.5-turbo-0125", "cl100k_base", True),
    ("openai/gpt-4o", "o200k_base", True), ("gemini-2.5-flash", "o200k_base", False),
    ("mistral-large-latest", "o200k_base", False), ("command-r-plus", "o200k_base", False)])
def test_model_map(service: TokenService, model: str, encoding: str, exact: bool) -> None:
    tokenizer = service.tokenizer(model)
    assert (tokenizer.encoding, tokenizer.exact, tokenizer.known) == (encoding, exact, True)


def test_model_map_rejects_bad_configuration() -> None:
    with pytest.raises(TokenConfigError, match="unknown encoding"):
        ModelTokenizers.from_mapping({"encodings": {"x*": "p50k_base"}})
    with pytest.raises(TokenConfigError, match="positive"):
        ModelTokenizers.from_mapping({"estimates": {"x*": Decimal("-1")}})
