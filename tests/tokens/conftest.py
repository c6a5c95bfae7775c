from __future__ import annotations

from collections.abc import Iterator

import pytest
import tiktoken

from gateway.settings import PROJECT_ROOT
from gateway.tokens.cpu import CpuCounter
from gateway.tokens.encodings import load_all
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.service import TokenService


@pytest.fixture(scope="session")
def encodings() -> dict[str, tiktoken.Encoding]:
    return load_all()


@pytest.fixture
def service(encodings: dict[str, tiktoken.Encoding]) -> Iterator[TokenService]:
    svc = TokenService(CpuCounter(encodings),
                       ModelTokenizers.load(PROJECT_ROOT / "config" / "tokens.toml"),
                       inline_max_chars=2048, threads=4)
    yield svc
    svc.close()
