"""Azure OpenAI: OpenAI's wire at deployment URLs, with `api-version` and an `api-key` header.

The deployment is the model's entry in `[providers.azure] deployments` (model -> deployment
name), else the model name itself, as Azure's own quickstarts name deployments.
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.domain import ChatRequest
from gateway.errors import BadRequest
from gateway.providers.base import Credential
from gateway.providers.openai import OpenAIAdapter
from gateway.settings import ProviderSettings

DEFAULT_API_VERSION = "2024-10-21"  # the current GA data-plane version


class AzureOpenAIAdapter(OpenAIAdapter):
    def __init__(self, settings: ProviderSettings, name: str = "azure") -> None:
        super().__init__(settings, name)

    def require_key(self, credential: Credential) -> None:
        if not credential.base_url:
            raise BadRequest(
                f"provider {self.name} has no endpoint: set AZURE_OPENAI_ENDPOINT (or "
                f"[providers.{self.name}] base_url), e.g. https://RESOURCE.openai.azure.com",
                code="missing_provider_setting", details={"provider": self.name})
        if not credential.api_key:
            raise BadRequest(
                f"no credential is configured for provider {self.name}: set "
                "AZURE_OPENAI_API_KEY or store one for the project",
                code="missing_provider_credential", details={"provider": self.name})

    def url(self, credential: Credential, chat: ChatRequest) -> str:
        model = str(chat.body.get("model", ""))
        deployment = self.settings.deployments.get(model, model)
        version = (credential.options.get("api_version") or self.settings.api_version
                   or DEFAULT_API_VERSION)
        return (f"{credential.base_url.rstrip('/')}/openai/deployments/"
                f"{quote(deployment, safe='')}/chat/completions?api-version={quote(version)}")

    def headers(self, credential: Credential) -> dict[str, str]:
        return {"Content-Type": "application/json", "api-key": credential.api_key}
