"""The advisor interface every provider implements, and its errors (the one that the config
asks for is made by ``cloud.ai.configured``)."""

from __future__ import annotations

from typing import Protocol

from cloud.ai.models import Advice, RoomContext
from shared.errors import SmartfarmError


class ProviderError(SmartfarmError):
    """A provider could not advise. ``transient``: worth retrying later (throttled, unreachable),
    as opposed to a configuration problem or an answer that cannot be used."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        attempts: int = 1,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.attempts = attempts
        # Tokens spent even though the answer was unusable (a malformed one still costs).
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens


class Provider(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str | None: ...

    async def advise(self, ctx: RoomContext) -> Advice: ...
