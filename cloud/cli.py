"""``smartfarm cloud …``: serve, worker, migrate, seed-db, create-user, check-config,
provision-device, backup, restore, export.

``cloud_main(argv)`` is the entry point the top-level ``smartfarm`` script dispatches to.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from cloud.aws_provision import add_arguments as provision_arguments
from cloud.aws_provision import provision_main
from cloud.backup import add_arguments as backup_arguments
from cloud.backup import backup_main
from cloud.config import CloudSettings, ConfigError, load_settings, mask_dsn
from cloud.export import add_arguments as export_arguments
from cloud.export import export_main
from cloud.logs import configure_logging
from shared.about import version_line
from shared.config_problems import Problem, problems_from_validation, report
from shared.errors import SmartfarmError

log = logging.getLogger(__name__)

ENV_PREFIX = "SMARTFARM_CLOUD_"
# Help for the options other modules add (cloud/backup.py, cloud/export.py), so that every
# option of every command explains itself (tests/integration/test_cli.py walks them all).
EXTRA_HELP: dict[tuple[str, str], str] = {
    ("restore", "backup"): "a file `smartfarm cloud backup` wrote",
    ("restore", "--bin-dir"): "where to look first for pg_dump / pg_restore (repeatable)",
    ("export", "--farm"): "the farm's id",
    ("export", "--format"): "csv (default) or parquet",
    ("export", "--out"): "the file to write",
}


def _fill_help(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, parser in sub.choices.items():
        for action in parser._actions:
            key = action.option_strings[-1] if action.option_strings else action.dest
            if not action.help and (name, key) in EXTRA_HELP:
                action.help = EXTRA_HELP[(name, key)]


def config_problems(path: Path | None, overrides: dict[str, Any]) -> list[Problem]:
    """Every problem of the cloud config (file + environment), or [] when the cause is not a
    validation error (a missing file, bad TOML: load_settings says those in one line)."""
    data: dict[str, Any] = {}
    text = None
    if path is not None:
        try:
            text = Path(path).read_text()
            data = tomllib.loads(text)
        except (OSError, tomllib.TOMLDecodeError):
            return []
        data["config_path"] = Path(path).resolve()
    data.update(overrides)
    try:
        CloudSettings(**data)
    except ValidationError as exc:
        return problems_from_validation(
            exc, model=CloudSettings, data=data, env=dict(os.environ), env_prefix=ENV_PREFIX,
            text=text, env_aliases={"database_url": ("DATABASE_URL",)},
        )
    return []


def config_summary(settings: CloudSettings) -> str:
    """One line for a config that loads."""
    where = str(settings.config_path) if settings.config_path else "environment only (no file)"
    url = settings.database_url.get_secret_value() if settings.database_url else None
    database = mask_dsn(url) if url else f"embedded PostgreSQL in {settings.data_path}"
    logins = "local logins"
    if settings.auth.cognito.enabled:
        logins += f" + Cognito pool {settings.auth.cognito.user_pool_id}"
    worker = "in-process job worker" if settings.jobs.in_process_worker else "external workers"
    return (f"OK: {where} — listens on http://{settings.host}:{settings.port}/, database"
            f" {database}, {logins}, {worker}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartfarm cloud", description=__doc__)
    parser.add_argument("-V", "--version", action="version", version=version_line(),
                        help="print the installed smartfarm version and exit")
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SMARTFARM_CLOUD_CONFIG"),
        help="TOML config file (env: SMARTFARM_CLOUD_CONFIG); environment overrides it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the HTTP API (migrates first)")
    serve.add_argument("--host", help="listen address (default: the config's host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: the config's port, 8000)")
    migrate = sub.add_parser("migrate", help="apply pending migrations")
    migrate.add_argument(
        "--down", type=int, default=0, metavar="N", help="revert the last N migrations instead"
    )
    seed = sub.add_parser("seed-db", help="fill a demo farm (idempotent)")
    seed.add_argument("--days", type=int, default=7, help="days of telemetry (default 7)")
    user = sub.add_parser("create-user", help="create a local user (or reset its password)")
    user.add_argument("email", help="the user's email address (their login)")
    user.add_argument("--password", required=True, help="at least 10 characters")
    user.add_argument("--admin", action="store_true", help="site admin: owner of every farm")
    check = sub.add_parser(
        "check-config", help="check the config (file + SMARTFARM_CLOUD_* environment): one OK"
                             " line, or every problem; exit status 2 when there is one")
    check.add_argument("--print", action="store_true", dest="print_config",
                       help="print the full effective config as JSON (secrets masked)")
    worker = sub.add_parser("worker", help="run a background job worker (any number, anywhere)")
    worker.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help="only this queue (default, ai, notify); repeat for several (default: all)",
    )
    worker.add_argument("--concurrency", type=int, help="jobs at once (default: jobs.concurrency)")
    provision_arguments(sub.add_parser(
        "provision-device", help="make an edge an AWS IoT thing: certificate, policy, endpoint"))
    backup_arguments(sub)
    export_arguments(sub)
    _fill_help(sub)
    return parser


def _progress(stream: TextIO) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        width = 40
        share = done / total if total else 1.0
        bar = "#" * int(share * width)
        stream.write(f"\r  telemetry [{bar:<{width}}] {done:>9,}/{total:,} rows")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


async def _with_db(settings: CloudSettings, job: str, args: argparse.Namespace) -> int:
    from cloud.auth.passwords import Passwords
    from cloud.db.database import Database
    from cloud.db.embedded import resolve_dsn
    from cloud.db.migrate import migrate

    dsn, embedded = await resolve_dsn(settings)
    try:
        if job == "migrate":
            done = await migrate(dsn, down=args.down)
            verb = "reverted" if args.down else "applied"
            print(f"{verb}: {', '.join(done)}" if done else "nothing to do")
            return 0
        await migrate(dsn)
        db = await Database.connect(dsn, min_size=1, max_size=2)
        try:
            passwords = Passwords(settings.auth)
            if job == "seed-db":
                from cloud.seed import DEMO_EMAIL, DEMO_PASSWORD, seed

                added = await seed(db, passwords, days=args.days, progress=_progress(sys.stderr))
                print("added: " + ", ".join(f"{v} {k}" for k, v in added.items()))
                print(f"demo login: {DEMO_EMAIL} / {DEMO_PASSWORD}")
                return 0
            from cloud.db import users

            row = await users.create(
                db,
                email=args.email,
                password_hash=await passwords.hash(args.password),
                is_admin=args.admin,
                replace=True,
            )
            print(f"user {row['email']} (id {row['id']}{', admin' if row['is_admin'] else ''})")
            return 0
        finally:
            await db.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def cloud_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    overrides = {}
    if args.command == "serve":
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        problems = config_problems(args.config, overrides)
        where = str(args.config) if args.config else "environment"
        print(f"config error: {report(where, problems) if problems else exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        if args.print_config:
            print(json.dumps(settings.masked(), indent=2, default=str))
        else:
            print(config_summary(settings))
        return 0
    configure_logging(settings)
    if args.command == "create-user" and len(args.password) < 10:
        print("password must be at least 10 characters", file=sys.stderr)
        return 2
    try:
        if args.command == "provision-device":
            return provision_main(args)
        if args.command in ("backup", "restore"):
            return asyncio.run(backup_main(settings, args))
        if args.command == "export":
            return asyncio.run(export_main(settings, args))
        if args.command == "serve":
            from aiohttp import web

            from cloud.app import init_app
            from shared.collector import settle_after_startup

            app = init_app(settings)

            async def settle(_: web.Application) -> None:  # after the app's own start-up
                settle_after_startup()

            app.on_startup.append(settle)
            try:
                web.run_app(
                    app,
                    host=settings.host,
                    port=settings.port,
                    print=None,
                    access_log=None,
                )
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                print(f"error: port {settings.port} on {settings.host} is already in use (another"
                      " cloud, or another program?): stop it, or choose another with --port or"
                      f" SMARTFARM_CLOUD_PORT — {exc}", file=sys.stderr)
                return 2
            return 0
        if args.command == "worker":
            from cloud.jobs.worker import worker_main

            return asyncio.run(
                worker_main(settings, queues=args.queues, concurrency=args.concurrency)
            )
        return asyncio.run(_with_db(settings, args.command, args))
    except SmartfarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
