"""`spendgate`: serve, migrate, and the operator commands (accounts, credits, gateways, logs, ...)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.settings import Settings

WHERE = """\
database: DATABASE_URL, else the embedded Postgres under SPENDGATE_DATA_DIR (default: .spendgate in the project
directory: the nearest directory, this one or a parent, holding a .env file or a .spendgate directory; settings
are read from that .env, the environment winning). Operator commands print the database they use on stderr,
never create one (`spendgate migrate` or `serve` do), and refuse a database that is not migrated. Without a
running `spendgate serve`, each command starts the embedded server and stops it again (about half a second more).
"""


def _database_url(settings: Settings) -> str:
    from gateway.db import embedded_database_url

    return settings.database_url or embedded_database_url(settings.data_dir)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.db import migrate

    migrate(_database_url(settings))
    print("migrations applied")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT. Then (uvicorn + Services.stop): stop accepting, let in-flight requests and
    streams finish for up to SPENDGATE_SHUTDOWN_TIMEOUT_S, cancel what is left, settle every reservation this
    process holds, flush the request logs, close the pool, exit 0."""
    import os

    import uvicorn

    from gateway.app import create_app

    # The app's startup migrates under an advisory lock, so instances starting together are safe.
    url = _database_url(settings)
    settings = Settings(**{**settings.__dict__, "database_url": url})
    host = args.host or settings.host
    port = args.port or settings.port
    print(f"spendgate serving on http://{host}:{port}", file=sys.stderr, flush=True)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "lifespan": "on",
                               "log_config": None,  # uvicorn's own records go through our JSON log lines
                               "timeout_graceful_shutdown": max(1, round(settings.shutdown_timeout_seconds))}
    if settings.workers > 1:
        # each worker process builds its own app (and pool) from the environment
        os.environ["DATABASE_URL"] = url
        uvicorn.run("gateway.app:create_app", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser. Imports nothing heavy: `spendgate --help` and argument errors answer at once."""
    from gateway.admin.cli import Parser, add_commands

    parser = Parser(prog="spendgate", description=__doc__, epilog=WHERE,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the `database: ...` line on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="migrate and start the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="apply database migrations (creates the embedded database if need be)")
    migrate.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                         help="do not print the `database: ...` line on stderr")
    migrate.set_defaults(func=cmd_migrate)
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway.context import configure_logging

    configure_logging()
    settings = Settings.from_env()
    if args.command == "migrate" and not args.quiet:
        from gateway.admin.cli_db import target

        print(target(settings).line(creating=True), file=sys.stderr, flush=True)
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
