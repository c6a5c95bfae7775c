"""AI cost gateway: a metered, budgeted, streaming proxy in front of LLM providers."""

__version__ = "0.1.0"
SERVICE_NAME = "ai-cost-gateway"
