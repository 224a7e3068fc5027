"""Cloud configuration: an optional TOML file plus ``SMARTFARM_CLOUD_…`` environment overrides.

Nested keys join with ``__`` (``SMARTFARM_CLOUD_AUTH__ACCESS_TTL_S=600``). ``DATABASE_URL`` (or
``SMARTFARM_CLOUD_DATABASE_URL``) selects PostgreSQL; unset means the embedded server in the data
dir. Secrets come only from the environment or files with tight permissions; ``masked()`` is what
``check-config`` prints.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cloud.ai.settings import AiConfig
from cloud.jobs.settings import JobsConfig
from cloud.live.settings import LiveConfig
from cloud.notify.settings import NotifyConfig
from cloud.sync.settings import SyncConfig
from shared.errors import SmartfarmError

MASK = "**********"


class ConfigError(SmartfarmError):
    """The configuration cannot be used; the message names the bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Section):
    pool_min: int = Field(default=1, ge=0, le=100)
    pool_max: int = Field(default=10, ge=1, le=500)
    connect_timeout_s: float = Field(default=10, gt=0, le=300)


class CognitoConfig(_Section):
    """AWS Cognito user pool whose tokens the API accepts besides its own (off when unset)."""

    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    user_pool_id: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+_\w+$")
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    # Default: the pool's own https://cognito-idp.<region>.amazonaws.com/<pool>/.well-known/...
    jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    token_use: list[Literal["access", "id"]] = Field(default=["access", "id"], min_length=1)
    # An unknown `kid` refetches the JWKS at most this often: a flood of forged kids must not
    # turn the API into a traffic source against the pool.
    jwks_refresh_min_s: float = Field(default=60, ge=0)
    jwks_timeout_s: float = Field(default=5, gt=0, le=60)
    # A verified pool user with no local account gets one (with no farms) on first use.
    create_users: bool = True

    @model_validator(mode="after")
    def _complete(self) -> Self:
        given = {k: getattr(self, k) for k in ("region", "user_pool_id", "client_id")}
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(k for k, v in given.items() if not v)
            raise ValueError(f"Cognito needs region, user_pool_id and client_id; missing {missing}")
        pool = self.user_pool_id
        if pool and not pool.startswith(f"{self.region}_"):
            raise ValueError(f"user_pool_id {pool} is not in region {self.region}")
        return self

    @property
    def enabled(self) -> bool:
        return self.user_pool_id is not None

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.user_pool_id}"

    @property
    def jwks_endpoint(self) -> str:
        return self.jwks_url or f"{self.issuer}/.well-known/jwks.json"


class AuthConfig(_Section):
    # HS256 signing secret; when neither is given a random one is generated into the data dir.
    jwt_secret: SecretStr | None = None
    jwt_secret_file: Path | None = None
    issuer: str = "smartfarm"
    access_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_ttl_s: int = Field(default=30 * 86_400, ge=300)
    # argon2id cost; OWASP's second recommended setting (19 MiB, t=2). Tests lower it.
    argon2_time_cost: int = Field(default=2, ge=1, le=10)
    argon2_memory_kib: int = Field(default=19_456, ge=8, le=1_048_576)
    login_per_account: int = Field(
        default=5, ge=1, description="failed logins per account and IP before delays start"
    )
    login_per_ip: int = Field(default=20, ge=1, description="login attempts per window")
    login_window_s: float = Field(
        default=300, gt=0, description="the per-IP window; also the longest login delay"
    )
    api_per_token: int = Field(default=1_200, ge=1, description="API requests per minute")
    unauthenticated_per_min: int = Field(
        default=30,
        ge=1,
        description="per client address: bad edge and refresh tokens and AWS IoT destination"
        " confirmations a minute (bursts up to this many)",
    )
    cognito: CognitoConfig = Field(default_factory=CognitoConfig)


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SMARTFARM_CLOUD_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("data/cloud")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line (stdout and log_file)"
    )
    log_file: Path | None = Field(default=None, description="rotating file, 10 MB × 10")
    log_max_bytes: int = Field(default=10 * 2**20, ge=1024, description="log_file rotates here")
    log_backups: int = Field(default=10, ge=1, le=1000, description="rotated files kept")
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "DATABASE_URL", "SMARTFARM_CLOUD_DATABASE_URL", "database_url"
        ),
    )
    migrate_on_start: bool = True
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    ai: AiConfig = Field(default_factory=AiConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    cors_origins: list[str] = Field(default_factory=list, description="empty: CORS off")
    # Honour X-Forwarded-For (only behind a proxy you control) for per-IP login limits.
    trust_forwarded_for: bool = False
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    config_path: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init kwargs).
        return (env_settings, init_settings)

    def resolve(self, path: Path) -> Path:
        if path.is_absolute() or self.config_path is None:
            return path
        return (self.config_path.parent / path).resolve()

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data, every secret masked."""
        data = self.model_dump(mode="json", exclude={"database_url"})
        url = self.database_url.get_secret_value() if self.database_url else None
        data["database_url"] = mask_dsn(url) if url else "(embedded PostgreSQL in data_dir)"
        data["data_dir"] = str(self.data_path)
        return data


def mask_dsn(dsn: str) -> str:
    """``postgresql://u:secret@h/db`` → ``postgresql://u:**********@h/db`` (key=value DSNs too)."""
    if "://" not in dsn:
        return " ".join(
            f"password={MASK}" if part.startswith("password=") else part for part in dsn.split()
        )
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username}:{MASK}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{loc}: {err['msg']}"


def load_settings(path: Path | str | None = None, **overrides: Any) -> CloudSettings:
    """Read the optional TOML file, apply env overrides, validate; ConfigError names the bad key."""
    data: dict[str, Any] = {}
    where = "environment"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        data["config_path"] = path.resolve()
    data.update(overrides)
    try:
        return CloudSettings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_first_error(exc)}") from None
