"""asyncgate: serve, api, worker, migrate, keys and jobs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Iterator, Sequence

from asyncgate.config import ConfigError, Settings, load_settings, unknown_environment
from asyncgate.embedded import EmbeddedPostgres
from asyncgate.logs import LOG_FORMATS, configure
from asyncgate.text import table

log = logging.getLogger("asyncgate")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database URL, or an embedded server's, started for this block."""
    if settings.database.url is not None:
        yield settings.database.url.reveal()
        return
    embedded = EmbeddedPostgres(settings.database.data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncgate", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (or ASYNCGATE_CONFIG)")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text or json lines (or [logging] format)"
    )
    # --config is accepted after the command too; there it must not reset the one given before.
    config_after = argparse.ArgumentParser(add_help=False)
    config_after.add_argument(
        "--config", default=argparse.SUPPRESS, help="TOML configuration file (or ASYNCGATE_CONFIG)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(commands.add_parser, parents=[config_after])
    for name, text in (
        ("serve", "API processes (one per core), a worker and the sweeper"),
        ("api", "the HTTP API only"),
    ):
        sub = add_command(name, help=text)
        sub.add_argument("--host", help="address to listen on (or [server] host)")
        sub.add_argument("--port", type=int, help="port to listen on (or [server] port)")
        if name == "api":
            sub.add_argument("--processes", type=int, help="API processes sharing the port")
        else:
            sub.add_argument(
                "--processes",
                type=int,
                dest="serve_processes",
                help="API processes (0: one per core; or [server] serve_processes)",
            )
    add_command("worker", help="a worker and the sweeper, no HTTP")
    migrate = add_command("migrate", help="apply database migrations")
    migrate.add_argument(
        "--revision", default="head", help="upgrade to REVISION (default: the newest, head)"
    )
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    keys = add_command("keys", help="manage virtual keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("name", help="a unique name for the key, shown by keys list")
    create.add_argument(
        "--admin", action="store_true", help="the key may list every job, not only its own"
    )
    key_commands.add_parser("list", help="list keys (never the keys themselves)")
    disable = key_commands.add_parser("disable", help="disable a key by name")
    disable.add_argument("name", help="the name the key was created with")
    from asyncgate import webhook_commands
    from asyncgate.dba_args import add_jobs_command

    add_jobs_command(add_command)
    webhook_commands.add_parser(add_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "jobs":
        from asyncgate import dba_args

        dba_args.check(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"asyncgate: configuration error: {exc}", file=sys.stderr)
        return 2
    server_changes = {
        key: getattr(args, key)
        for key in ("host", "port", "processes", "serve_processes")
        if getattr(args, key, None) is not None
    }
    if server_changes:
        settings = settings.replace(server=server_changes)
    if args.log_format is not None:
        settings = settings.replace(logging={"format": args.log_format})
    configure(settings.log_level, settings.logging.format)
    for warning in unknown_environment():
        log.warning("%s", warning)

    from asyncgate.models import migrate
    from asyncgate.models.database import DatabaseUnreachable, wait_until_reachable

    with database(settings) as url:
        # Migrations hold an advisory lock across transactions: they need a session of their
        # own, which a transaction-mode pooler on url does not give.
        direct = settings.database.listen_url.reveal() if settings.database.listen_url else url
        try:
            for reached in dict.fromkeys((url, direct)):
                wait_until_reachable(
                    reached,
                    timeout=settings.database.startup_timeout_seconds,
                    connect_timeout=settings.database.connect_timeout,
                )
            if args.command == "migrate":
                if args.downgrade:
                    migrate.downgrade(direct, args.downgrade)
                else:
                    migrate.upgrade(direct, args.revision)
                print("migrations applied")
                return 0
            migrate.upgrade(direct)
        except DatabaseUnreachable as exc:
            print(f"asyncgate: {exc}", file=sys.stderr)
            return 1
        if args.command == "keys":
            return asyncio.run(_keys(settings, url, args))
        if args.command == "webhooks":
            return asyncio.run(_webhooks(settings, url, args))
        if args.command == "jobs":
            from asyncgate import dba

            return dba.run(settings, url, args)

        from asyncgate import server

        if args.command == "serve":
            server.serve(settings, url, args.config)
        elif args.command == "api" and settings.server.processes > 1:
            server.serve_http_processes(settings, url, args.config)
        elif args.command == "api":
            server.run(server.serve_http(settings, url, run_worker=False))
        else:
            server.run(server.run_worker(settings, url))
    return 0


async def _keys(settings: Settings, url: str, args: argparse.Namespace) -> int:
    from asyncgate.models.keys import DuplicateKeyName, KeyStore
    from asyncgate.runtime import open_database

    async with open_database(settings, url) as db:
        keys = KeyStore(db)
        if args.keys_command == "create":
            try:
                key_id, key = await keys.create(args.name, admin=args.admin)
            except DuplicateKeyName:
                print(f"a key named {args.name!r} already exists", file=sys.stderr)
                return 1
            print(key)
            role = "admin key" if args.admin else "key"
            message = f"{role} {args.name!r} created (id {key_id}); it is shown only now"
            print(message, file=sys.stderr)
        elif args.keys_command == "list":
            rows = [
                (
                    str(info.id),
                    info.name,
                    f"{info.created_at:%Y-%m-%d %H:%M}",
                    f"disabled {info.disabled_at:%Y-%m-%d %H:%M}" if info.disabled_at else "active",
                    "admin" if info.is_admin else "key",
                )
                for info in await keys.list()
            ]
            print(table(("ID", "NAME", "CREATED", "STATE", "ROLE"), rows))
        else:
            if not await keys.disable(args.name):
                print(f"no key named {args.name!r}", file=sys.stderr)
                return 1
            print(f"key {args.name!r} disabled")
    return 0


async def _webhooks(settings: Settings, url: str, args: argparse.Namespace) -> int:
    from asyncgate import webhook_commands
    from asyncgate.runtime import open_database

    async with open_database(settings, url) as db:
        return await webhook_commands.run(settings, db, args)


if __name__ == "__main__":
    sys.exit(main())
