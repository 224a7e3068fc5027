"""The one gateway to PostgreSQL: a psycopg async pool with driver errors turned into CloudErrors.

Repositories (the other modules of ``cloud.db``) call ``fetch_one``/``fetch_all``/``execute`` or
open ``transaction()``; handlers never see SQL or psycopg.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cloud.errors import BadRequest, Conflict, DatabaseUnavailable, NotFound

log = logging.getLogger(__name__)

Params = Mapping[str, Any] | Sequence[Any] | None
Row = dict[str, Any]
Cursor = psycopg.AsyncCursor[Row]

# Connections the bulk lane (edge batch transactions) may never take: a fleet of edges keeping
# every connection busy with batches must not make a user's command, or the stream lookup that
# delivers it, queue behind hundreds of batches (1,000 edges: command delivery took 13 s).
RESERVED = 2


def _translate(exc: Exception) -> Exception | None:
    """The domain error for a driver error, or None when it is a bug to let through."""
    if isinstance(exc, pgerr.UniqueViolation):
        constraint = exc.diag.constraint_name or "unique key"
        return Conflict(f"already exists ({constraint})")
    if isinstance(exc, pgerr.ForeignKeyViolation):
        return NotFound("a referenced resource does not exist")
    if isinstance(exc, pgerr.CheckViolation):
        return BadRequest(f"value rejected by {exc.diag.constraint_name or 'a check'}")
    if isinstance(exc, psycopg.DataError):
        # A value PostgreSQL cannot take (out of range, bad text): the input's fault, not a bug.
        return BadRequest("a value is out of range or cannot be stored")
    if isinstance(exc, pgerr.QueryCanceled):
        return DatabaseUnavailable("the query took too long")
    if isinstance(exc, PoolTimeout | psycopg.OperationalError):
        return DatabaseUnavailable()
    return None


class Database:
    """Owns the pool. Open with ``await Database.connect(dsn, …)``, close with ``close()``."""

    def __init__(self, pool: AsyncConnectionPool, dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn
        # At most this many bulk transactions hold connections at once; the others wait here,
        # in arrival order, while the pool's remaining connections serve everything else.
        self.bulk_slots = max(1, pool.max_size - min(RESERVED, pool.max_size - 1))
        self._bulk = asyncio.Semaphore(self.bulk_slots)

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10
    ) -> Database:
        pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            open=False,
            name="smartfarm-cloud",
            # A request must not wait forever on a stuck query. Autocommit: a lone statement is
            # one round trip instead of three (BEGIN, statement, COMMIT); transaction() opens
            # real transactions where several statements must hold together.
            kwargs={"options": "-c statement_timeout=30000", "autocommit": True},
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            await pool.close()
            detail = f"cannot connect to PostgreSQL within {connect_timeout:g}s"
            raise DatabaseUnavailable(detail) from exc
        return cls(pool, dsn)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def _cursor(self, *, atomic: bool) -> AsyncIterator[Cursor]:
        try:
            async with self.pool.connection() as conn:
                block = conn.transaction() if atomic else nullcontext()
                async with block, conn.cursor(row_factory=dict_row) as cur:
                    yield cur
        except (psycopg.Error, PoolTimeout) as exc:
            mapped = _translate(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def cursor(self) -> AbstractAsyncContextManager[Cursor]:
        """A cursor on an autocommit connection of the pool, for a caller that opens and ends
        its transaction itself (an edge batch pipelines its BEGIN and COMMIT with statements)."""
        return self._cursor(atomic=False)

    @asynccontextmanager
    async def bulk_cursor(self) -> AsyncIterator[Cursor]:
        """``cursor()`` in the bulk lane: it waits for one of ``bulk_slots`` first (as long as
        the pool would wait for a connection: DatabaseUnavailable past that), so bulk work never
        holds the pool's last ``RESERVED`` connections."""
        if self._bulk.locked():
            try:
                async with asyncio.timeout(self.pool.timeout):
                    await self._bulk.acquire()
            except TimeoutError:
                raise DatabaseUnavailable("the database is busy with other uploads") from None
        else:
            await self._bulk.acquire()  # a free slot: taken at once, no timer to arm
        try:
            async with self._cursor(atomic=False) as cur:
                yield cur
        finally:
            self._bulk.release()

    def transaction(self) -> AbstractAsyncContextManager[Cursor]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        return self._cursor(atomic=True)

    async def fetch_one(self, query: str, params: Params = None) -> Row | None:
        async with self._cursor(atomic=False) as cur:
            await cur.execute(query, params)
            return await cur.fetchone()

    async def fetch_all(self, query: str, params: Params = None) -> list[Row]:
        async with self._cursor(atomic=False) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    async def execute(self, query: str, params: Params = None) -> int:
        """Run one statement (atomic on its own); the number of rows it touched."""
        async with self._cursor(atomic=False) as cur:
            await cur.execute(query, params)
            return cur.rowcount

    async def ping(self) -> bool:
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except (psycopg.Error, PoolTimeout):
            return False

    def stats(self) -> dict[str, int]:
        return dict(self.pool.get_stats())
