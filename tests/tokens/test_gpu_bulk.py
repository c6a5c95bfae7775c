"""`gateway tokens count FILE...`: JSONL chat logs counted in batches, totals and cost."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from gateway.pricing import PriceTable
from gateway.settings import load_settings
from gateway.tokens.bulk import count_files, run
from gateway.tokens.service import TokenService

from .test_chat import JARGON, WEATHER, WEATHER_TOOLS


def write_log(path: Path) -> None:
    lines = [
        {"model": "gpt-4o", "messages": JARGON},
        {"request": {"model": "gpt-4", "messages": WEATHER, "tools": WEATHER_TOOLS},
         "response": {"choices": [{"message": {"role": "assistant",
                                               "content": "It is sunny."}}]}},
        {"model": "gpt-4o", "prompt": "Hello world", "completion": "Hi there!"},
        {"model": "claude-sonnet-4-5", "messages": JARGON},
    ]
    raw = b"\n".join(orjson.dumps(line) for line in lines)
    path.write_bytes(raw + b"\nnot json\n\n{\"messages\": []}\n")


async def test_totals_equal_per_line_counting(tmp_path: Path, service: TokenService) -> None:
    log = tmp_path / "log.jsonl"
    write_log(log)
    prices = PriceTable.load(load_settings().pricing)
    report = await count_files([log], service, prices, batch_lines=2)
    gpt4o = report.models["gpt-4o"]
    jargon = (await service.count_chat({"messages": JARGON}, "gpt-4o")).tokens
    hello = (await service.count_chat({"messages": [{"content": "Hello world"}]},
                                      "gpt-4o")).tokens
    [hi] = await service.count(["Hi there!"], "o200k_base")
    assert (gpt4o.lines, gpt4o.input_tokens, gpt4o.output_tokens) == (2, jargon + hello, hi)
    assert gpt4o.exact and report.models["gpt-4"].input_tokens == 105
    assert report.models["gpt-4"].output_tokens == 4  # "It is sunny."
    assert not report.models["claude-sonnet-4-5"].exact
    price = prices.get("gpt-4o")
    assert price is not None
    assert gpt4o.cost_usd == (Decimal(jargon + hello) * price.input
                              + Decimal(hi) * price.output) / 10**6
    assert [s.split(": ", 1)[1][:8] for s in report.skipped] == ["not JSON", "no model"]
    assert report.skipped[0].startswith(f"{log}:5: ")


def test_the_command_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.jsonl"
    write_log(log)
    out = io.StringIO()
    assert run(load_settings(), [str(log)], out=out) == 1  # two lines were skipped
    text = out.getvalue()
    assert "gpt-4o" in text and "(estimate)" in text and "skipped" in text
    assert run(load_settings(), [str(log)], model="gpt-4o-mini", as_json=True, out=out) == 1
    assert run(load_settings(), [str(tmp_path / "missing.jsonl")]) == 2
