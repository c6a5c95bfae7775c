"""`gateway tokens count FILE...`: JSONL chat logs counted in batches, totals and cost."""

from __future__ import annotations

import io
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.pricing import PriceTable
from gateway.settings import TokensSettings, load_settings
from gateway.tokens import bulk as bulk_module
from gateway.tokens.bulk import bulk_backend, count_files, run
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


def test_auto_keeps_small_jobs_on_the_cpu() -> None:
    auto = TokensSettings(backend="auto", bulk_gpu_min_bytes=1000)
    assert bulk_backend(auto, 999) == "cpu"
    assert bulk_backend(auto, 1000) == "auto"  # large enough: the GPU if one can start
    assert bulk_backend(replace(auto, backend="gpu"), 10) == "gpu"  # asked for: kept
    assert bulk_backend(replace(auto, backend="cpu"), 10**12) == "cpu"


def test_the_command_starts_no_gpu_for_a_small_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log.jsonl"
    write_log(log)
    seen: list[tuple[str, Path | None]] = []
    real = bulk_module.build_token_service

    def recording(tokens: TokensSettings, *args: Any, **kwargs: Any) -> TokenService:
        seen.append((tokens.backend, kwargs.get("cache_dir")))
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(bulk_module, "build_token_service", recording)
    settings = load_settings()
    settings = replace(settings, tokens=replace(settings.tokens, backend="auto"))
    assert run(settings, [str(log)], out=io.StringIO()) == 1
    assert seen == [("cpu", settings.tokens.cache_path(settings.database.data_dir))]
    big = replace(settings, tokens=replace(settings.tokens, bulk_gpu_min_bytes=10))
    assert run(big, [str(log)], out=io.StringIO()) == 1  # auto: the GPU if one starts
    assert seen[-1][0] == "auto"
