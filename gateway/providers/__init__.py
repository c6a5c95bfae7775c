"""Provider adapters, one file each, built from `[providers.NAME]` by their `kind`."""

from __future__ import annotations

from collections.abc import Callable

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.azure import AzureOpenAIAdapter
from gateway.providers.base import Credential, ProviderAdapter
from gateway.providers.cohere import CohereAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.mistral import MistralAdapter
from gateway.providers.openai import OpenAIAdapter
from gateway.settings import ProviderSettings

ADAPTERS: dict[str, Callable[[ProviderSettings, str], ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "openai_compatible": OpenAIAdapter,
    "azure": AzureOpenAIAdapter,
    "mistral": MistralAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "cohere": CohereAdapter,
}


def create_adapter(name: str, settings: ProviderSettings) -> ProviderAdapter:
    return ADAPTERS[settings.kind](settings, name)


def configured_credentials(settings: ProviderSettings) -> tuple[Credential, ...]:
    """The gateway's own credentials for a provider: its `credentials` list, else its key."""
    if not settings.credentials:
        return (Credential("default", settings.api_key, settings.base_url),)
    return tuple(
        Credential(c.name, c.api_key, c.base_url or settings.base_url, c.weight,
                   {"api_version": c.api_version} if c.api_version else {})
        for c in settings.credentials)
