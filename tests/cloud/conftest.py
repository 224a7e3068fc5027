"""Cloud test fixtures: real PostgreSQL (DATABASE_URL, else embedded pgserver), a migrated
template database built once per session, and a cheap ``CREATE DATABASE … TEMPLATE`` per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from cloud.app import init_app
from cloud.auth.tokens import AccessTokens
from cloud.config import AuthConfig, CloudSettings, DatabaseConfig
from cloud.db.database import Database
from cloud.sync.settings import SyncConfig
from tests.cloud.fake_cognito import FakePool, new_key, pool_config
from tests.cloud.world import World, bearer, build_world, tokens_for
from tests.conftest import Databases

JWT_SECRET = "test-secret-" + "x" * 40


class IsolatedSettings(CloudSettings):
    """Settings from arguments only: the runner's DATABASE_URL must not redirect a test's app
    to the shared database."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **sources):  # type: ignore[no-untyped-def, override]
        return (init_settings,)


def auth_settings(**overrides: object) -> AuthConfig:
    """Auth settings for tests: a fixed secret and cheap argon2 (its cost is not under test)."""
    values: dict[str, object] = {
        "jwt_secret": JWT_SECRET,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 64,
    }
    values.update(overrides)
    return AuthConfig(**values)  # type: ignore[arg-type]


def make_settings(dsn: str, data_dir: Path, **overrides: object) -> CloudSettings:
    values: dict[str, object] = {
        "database_url": dsn,
        "data_dir": data_dir,
        "migrate_on_start": False,
        "database": DatabaseConfig(pool_min=1, pool_max=4),
        "auth": auth_settings(),
        # Tests run jobs explicitly (tests/cloud/test_jobs.py); an app per test must not start
        # a worker that runs periodic jobs against the test's database.
        "jobs": {"in_process_worker": False, "periodic": False},
        # No pacing (cloud.sync.pace) unless a test sets it: see tests/cloud/test_batch_pacing.py.
        "sync": SyncConfig(pace_max_s=0),
    }
    values.update(overrides)
    return IsolatedSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> CloudSettings:
    return make_settings(db_dsn, tmp_path)


@pytest.fixture
async def client(aiohttp_client, settings: CloudSettings) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    yield await aiohttp_client(init_app(settings))


async def _build_world(dsn: str) -> World:
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        return await build_world(db)
    finally:
        await db.close()


@pytest.fixture(scope="session")
def world_template(databases: Databases, template_db: str) -> tuple[str, World]:
    """The migrated template plus the test world, built once and then cloned."""
    name = databases.create(template=template_db)
    world = asyncio.run(_build_world(databases.dsn(name)))
    return name, world


@pytest.fixture
def world(world_template: tuple[str, World]) -> World:
    return world_template[1]


@pytest.fixture
def world_dsn(databases: Databases, world_template: tuple[str, World]) -> Iterator[str]:
    name = databases.create(template=world_template[0])
    yield databases.dsn(name)
    databases.drop(name)


@pytest.fixture
async def world_client(aiohttp_client, world_dsn: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await aiohttp_client(init_app(make_settings(world_dsn, tmp_path)))


@pytest.fixture(scope="session")
def tokens() -> AccessTokens:
    return tokens_for(JWT_SECRET)


@pytest.fixture
def auth(tokens: AccessTokens, world: World) -> Callable[[str], dict[str, str]]:
    """Headers for a world role (``owner``, ``operator``, ``viewer``, ``limited``, ``stranger``)."""

    def headers(role: str) -> dict[str, str]:
        return bearer(tokens, world.user_ids[role])

    return headers


@pytest.fixture
def clone_world(
    databases: Databases, world_template: tuple[str, World]
) -> Iterator[Callable[[], str]]:
    """A factory of fresh world databases, each dropped after the test."""
    made: list[str] = []

    def clone() -> str:
        made.append(databases.create(template=world_template[0]))
        return databases.dsn(made[-1])

    yield clone
    for name in made:
        databases.drop(name)


@pytest.fixture(scope="session")
def cognito_keys() -> dict[str, object]:
    """RSA keys made once (generation is the slow part): k1 published, k2 for rotations."""
    return {"k1": new_key(), "k2": new_key()}


@pytest.fixture
def cognito_pool(cognito_keys) -> FakePool:  # type: ignore[no-untyped-def]
    pool = FakePool(cognito_keys)
    pool.published = ["k1"]
    return pool


@pytest.fixture
async def cognito_url(aiohttp_server, cognito_pool: FakePool) -> str:  # type: ignore[no-untyped-def]
    """The fake pool's JWKS, served over HTTP on a free loopback port."""
    server = await aiohttp_server(cognito_pool.app())
    return str(server.make_url("/jwks.json"))


@pytest.fixture
def cognito_auth(cognito_url: str) -> Callable[..., AuthConfig]:
    """Auth settings that accept the fake pool's tokens (Cognito options as keywords)."""

    def make(**cognito: object) -> AuthConfig:
        return auth_settings(cognito=pool_config(cognito_url, **cognito))

    return make
