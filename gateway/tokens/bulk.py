"""`gateway tokens count FILE...`: count and price JSONL chat logs in bulk.

Each line is a JSON object: a chat request body (`model`, `messages`, `tools`...), or a
logged exchange `{"request": {...}, "response": {...}}`; a line may carry `prompt`, `input`
or `text` instead of messages, and `completion` or `output` (or an OpenAI `response` with
`choices`) for the reply. Input is counted as `TokenService.count_chat` bills it, output as
plain text. Lines are counted in large batches (all of a batch's texts of one encoding in
one call), so a GPU counter sees batches big enough to win.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog

from gateway.domain import Usage
from gateway.pricing import PriceTable
from gateway.settings import Settings, TokensSettings
from gateway.tokens.chat import chat_pieces
from gateway.tokens.encodings import load_all
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.service import TokenService, build_token_service, scale

BATCH_LINES = 4096
log = structlog.get_logger(__name__)


@dataclass
class ModelTotal:
    lines: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)  # None once a line of the model has no price
    exact: bool = True


@dataclass
class BulkReport:
    models: dict[str, ModelTotal] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "file:line: why"

    def as_dict(self) -> dict[str, Any]:
        return {"models": {m: {"lines": t.lines, "input_tokens": t.input_tokens,
                               "output_tokens": t.output_tokens, "exact": t.exact,
                               "cost_usd": None if t.cost_usd is None else str(t.cost_usd)}
                           for m, t in sorted(self.models.items())},
                "skipped": len(self.skipped), "skipped_examples": self.skipped[:10]}


@dataclass
class _Line:
    model: str
    request: dict[str, Any]
    output: list[str]


def parse_line(raw: bytes, model: str | None) -> _Line | str:
    """One log line, or why it cannot be counted."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    if not isinstance(line, dict):
        return "not a JSON object"
    request = line.get("request", line)
    if not isinstance(request, dict):
        return "request is not an object"
    name = model or request.get("model") or line.get("model")
    if not isinstance(name, str) or not name:
        return "no model (give --model)"
    if "messages" not in request:
        text = next((request[k] for k in ("prompt", "input", "text")
                     if isinstance(request.get(k), str)), None)
        if text is None:
            return "no messages, prompt, input or text"
        request = {"messages": [{"content": text}]}
    return _Line(name, request, list(_outputs(line)))


def _outputs(line: dict[str, Any]) -> Iterator[str]:
    for key in ("completion", "output"):
        if isinstance(line.get(key), str):
            yield line[key]
    response = line.get("response")
    if isinstance(response, dict):
        response = response.get("body", response)  # OpenAI batch output wraps it
        for choice in response.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                yield message["content"]


async def count_lines(lines: Iterable[_Line], tokens: TokenService, prices: PriceTable,
                      report: BulkReport) -> None:
    """Count one batch of lines into the report: one `count` call per encoding."""
    batch = list(lines)
    texts: dict[str, list[str]] = {}
    spans = []
    for line in batch:
        tokenizer = tokens.tokenizer(line.model)
        pieces = chat_pieces(line.request, tokenizer.encoding)
        bucket = texts.setdefault(tokenizer.encoding, [])
        start = len(bucket)
        bucket.extend(pieces.texts)
        middle = len(bucket)
        bucket.extend(line.output)
        spans.append((tokenizer, pieces, start, middle, len(bucket)))
    counts = {enc: await tokens.count(group, enc) for enc, group in texts.items()}
    for line, (tokenizer, pieces, start, middle, end) in zip(batch, spans, strict=True):
        counted = counts[tokenizer.encoding]
        input_tokens = scale(sum(counted[start:middle]) + pieces.constant, tokenizer.factor)
        output_tokens = scale(sum(counted[middle:end]), tokenizer.factor)
        total = report.models.setdefault(line.model, ModelTotal())
        total.lines += 1
        total.input_tokens += input_tokens
        total.output_tokens += output_tokens
        total.exact = total.exact and tokenizer.exact and pieces.exact
        price = prices.get(line.model)
        if price is None or total.cost_usd is None:
            total.cost_usd = None
        else:
            usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
            total.cost_usd += prices.quote(price.provider, price.model, usage).cost


async def count_files(paths: Iterable[Path], tokens: TokenService, prices: PriceTable, *,
                      model: str | None = None, batch_lines: int = BATCH_LINES) -> BulkReport:
    report = BulkReport()
    pending: list[_Line] = []
    for path in paths:
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                parsed = parse_line(raw, model)
                if isinstance(parsed, str):
                    report.skipped.append(f"{path}:{number}: {parsed}")
                    continue
                pending.append(parsed)
                if len(pending) >= batch_lines:
                    await count_lines(pending, tokens, prices, report)
                    pending = []
    if pending:
        await count_lines(pending, tokens, prices, report)
    return report


def render(report: BulkReport, out: TextIO) -> None:
    print(f"{'model':32} {'lines':>9} {'input tokens':>14} {'output tokens':>14} "
          f"{'cost USD':>14}", file=out)
    lines = inputs = outputs = 0
    cost: Decimal | None = Decimal(0)
    for name, t in sorted(report.models.items()):
        shown = "no price" if t.cost_usd is None else f"{t.cost_usd:.6f}"
        flag = "" if t.exact else "  (estimate)"
        print(f"{name:32} {t.lines:9d} {t.input_tokens:14d} {t.output_tokens:14d} "
              f"{shown:>14}{flag}", file=out)
        lines, inputs, outputs = lines + t.lines, inputs + t.input_tokens, \
            outputs + t.output_tokens
        cost = None if cost is None or t.cost_usd is None else cost + t.cost_usd
    total = "incomplete" if cost is None else f"{cost:.6f}"
    print(f"{'total':32} {lines:9d} {inputs:14d} {outputs:14d} {total:>14}", file=out)
    for why in report.skipped[:10]:
        print(f"skipped {why}", file=out)
    if len(report.skipped) > 10:
        print(f"... {len(report.skipped) - 10} more lines skipped", file=out)


def bulk_backend(tokens: TokensSettings, input_bytes: int) -> str:
    """The backend for a bulk job: "auto" stays on the CPU below `tokens.bulk_gpu_min_bytes`
    of input, where the CPU is done before the GPU counter would have started (CUDA's
    context, the kernel and the vocabulary tables), so a small job is never slower."""
    if tokens.backend == "auto" and input_bytes < tokens.bulk_gpu_min_bytes:
        return "cpu"
    return tokens.backend


def run(settings: Settings, files: list[str], *, model: str | None = None,
        as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """The command: 0 when every line was counted, 1 when some were skipped."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"gateway: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    tokens = settings.tokens
    size = sum(p.stat().st_size for p in paths)
    backend = bulk_backend(tokens, size)
    if backend != tokens.backend:
        log.info("tokens_bulk_backend", backend=backend, input_bytes=size,
                 reason="smaller than tokens.bulk_gpu_min_bytes: the CPU is done sooner "
                        "than the GPU counter would start")
        tokens = replace(tokens, backend=backend)
    service = build_token_service(tokens, ModelTokenizers.load(tokens.models_file), load_all(),
                                  cache_dir=tokens.cache_path(settings.database.data_dir))
    try:
        report = asyncio.run(count_files(paths, service, PriceTable.load(settings.pricing),
                                         model=model))
    finally:
        service.close()
    if as_json:
        out.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render(report, out)
    return 1 if report.skipped else 0
