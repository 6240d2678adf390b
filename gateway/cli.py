"""`spendgate`: serve, migrate, and the operator commands (accounts, credits, gateways, logs, ...)."""

from __future__ import annotations

import argparse
import sys

from gateway.settings import Settings

WHERE = """\
database: DATABASE_URL, else the embedded Postgres under SPENDGATE_DATA_DIR (default: .spendgate in the project
directory: the nearest directory, this one or a parent, holding a .env file or a .spendgate directory; settings
are read from that .env, the environment winning). Operator commands print the database they use on stderr,
never create one (`spendgate migrate` or `serve` do), and refuse a database that is not migrated. Without a
running `spendgate serve`, each command starts the embedded server and stops it again (about half a second more).
"""


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.serve import migrate

    return migrate(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate, then serve until SIGTERM/SIGINT (gateway/serve.py: start-up order, the ready line, shutdown)."""
    from gateway.serve import serve

    return serve(settings, args.host, args.port)


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
