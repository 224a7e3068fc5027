"""The provider the config asks for: the built-in advisor, or Bedrock (whose module, and boto3,
are imported only then)."""

from __future__ import annotations

from typing import Any

from cloud.ai.provider import Provider
from cloud.ai.settings import AiConfig


def make_provider(config: AiConfig, *, client: Any = None) -> Provider:
    """The configured provider; ``client`` replaces Bedrock's boto3 client (tests)."""
    if config.provider == "bedrock":
        from cloud.ai.bedrock import BedrockAdvisor  # boto3 is imported only when used

        return BedrockAdvisor(config.bedrock, max_items=config.max_recommendations, client=client)
    from cloud.ai.builtin import BuiltinAdvisor

    return BuiltinAdvisor()
