"""AWS Bedrock provider: one Converse API call per room (Claude by default), the answer validated
as JSON, throttling and server errors retried with jittered exponential backoff, token usage
reported.

boto3 is synchronous: each call runs in a worker thread. botocore's own retries are off, so the
attempts and waits here are the only ones (and are counted in the run).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cloud.ai.models import Advice, RoomContext
from cloud.ai.prompt import MalformedAnswer, parse_answer, system_prompt, user_message
from cloud.ai.provider import ProviderError
from cloud.ai.settings import BedrockConfig
from shared.backoff import Backoff

log = logging.getLogger(__name__)

NAME = "bedrock"
RETRYABLE = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelNotReadyException",
        "ModelTimeoutException",
    }
)


def make_client(config: BedrockConfig) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "bedrock-runtime",
        region_name=config.region,
        endpoint_url=config.endpoint_url,
        config=Config(
            retries={"total_max_attempts": 1},
            read_timeout=config.timeout_s,
            connect_timeout=min(config.timeout_s, 10),
        ),
    )


class BedrockAdvisor:
    name = NAME

    def __init__(self, config: BedrockConfig, *, max_items: int, client: Any = None) -> None:
        self.config = config
        self.model = config.model_id
        self.max_items = max_items
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:  # created on first use: boto3 reads credentials then
            self._client = make_client(self.config)
        return self._client

    def request(self, ctx: RoomContext) -> dict[str, Any]:
        """The Converse request for one room."""
        return {
            "modelId": self.config.model_id,
            "system": [{"text": system_prompt(self.max_items)}],
            "messages": [{"role": "user", "content": [{"text": user_message(ctx)}]}],
            "inferenceConfig": {
                "maxTokens": self.config.max_tokens,
                "temperature": self.config.temperature,
            },
        }

    async def advise(self, ctx: RoomContext) -> Advice:
        request = self.request(ctx)
        response, attempts = await self._converse(request)
        usage = response.get("usage") or {}
        text = "".join(
            block.get("text", "")
            for block in response.get("output", {}).get("message", {}).get("content", [])
        )
        stop = response.get("stopReason")
        try:
            suggestions = parse_answer(text, max_items=self.max_items)
        except MalformedAnswer as exc:
            detail = f"{exc}" + (" (answer cut at max_tokens)" if stop == "max_tokens" else "")
            log.warning("Bedrock %s answered malformed JSON: %s", self.model, detail)
            raise ProviderError(
                f"malformed answer: {detail}",
                transient=False,
                attempts=attempts,
                input_tokens=usage.get("inputTokens"),
                output_tokens=usage.get("outputTokens"),
            ) from None
        return Advice(
            provider=NAME,
            model=self.model,
            suggestions=suggestions,
            attempts=attempts,
            input_tokens=usage.get("inputTokens"),
            output_tokens=usage.get("outputTokens"),
        )

    async def _converse(self, request: dict[str, Any]) -> tuple[dict[str, Any], int]:
        from botocore.exceptions import BotoCoreError, ClientError

        backoff = Backoff(self.config.backoff_base_s, self.config.backoff_max_s)
        attempts = 0
        while True:
            attempts += 1
            try:
                response = await asyncio.to_thread(self.client.converse, **request)
                return response, attempts
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                message = exc.response.get("Error", {}).get("Message", "") or code
                retryable = code in RETRYABLE
                problem = f"{code}: {message}"
            except BotoCoreError as exc:  # connection refused, read timeout, no credentials…
                from botocore.exceptions import NoCredentialsError, NoRegionError

                retryable = not isinstance(exc, NoCredentialsError | NoRegionError)
                problem = f"{type(exc).__name__}: {exc}"
            if not retryable:
                raise ProviderError(
                    f"Bedrock refused: {problem}", transient=False, attempts=attempts
                )
            if attempts >= self.config.max_attempts:
                raise ProviderError(
                    f"Bedrock unavailable after {attempts} attempts: {problem}",
                    transient=True,
                    attempts=attempts,
                )
            delay = backoff.delay()
            log.info("Bedrock %s (attempt %d); retrying in %.1f s", problem, attempts, delay)
            await asyncio.sleep(delay)
