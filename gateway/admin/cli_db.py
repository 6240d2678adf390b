"""The database of an operator command (`spendgate accounts list`, ...): which one, said in one line on stderr;
never created by such a command; used only when its schema is current; and the few stores the admin endpoints
use over it (`OperatorServices`), without what serving needs (migrations, the upstream client, the log writer,
the config listener, background tasks). `spendgate migrate` and `spendgate serve` are the commands that create
and migrate a database (gateway/cli.py).

Every operator command, reading or writing, requires a migrated database: it says "database not migrated: run
`spendgate migrate`" and exits 1 rather than migrating by surprise (a write into a half-migrated schema could
fail half-way).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.errors import CliError
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.db import Database

SECRET_QUERY_KEYS = ("password", "sslpassword", "passfile", "sslkey")


def safe_url(url: str) -> str:
    """A database URL fit to print: the password (in the user part or the query) removed."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hostport}" if at and user else hostport
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in SECRET_QUERY_KEYS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@dataclass(frozen=True)
class Target:
    """The database a command uses: `url` (DATABASE_URL), or the embedded server's data under `pgdata`."""

    url: str | None
    pgdata: Path
    url_from: Path | None = None  # the .env that set DATABASE_URL, when it was not the environment

    @property
    def embedded(self) -> bool:
        return self.url is None

    def line(self, *, creating: bool = False) -> str:
        """The one line naming the database (stderr, unless --quiet). `creating`: the command creates the embedded
        database when there is none (migrate)."""
        if self.url is not None:
            origin = f" (DATABASE_URL from {self.url_from})" if self.url_from else ""
            return f"database: {safe_url(self.url)}{origin}"
        if not embedded_exists(self.pgdata):
            note = " (new: creating it)" if creating else " (none there)"
        elif not embedded_running(self.pgdata):
            note = " (not running: this command starts it, and stops it again after; that takes a moment)"
        else:
            note = ""
        return f"database: embedded at {self.pgdata}{note}"


def target(settings: Settings, environ: Mapping[str, str] | None = None) -> Target:
    environ = os.environ if environ is None else environ
    pgdata = settings.data_dir / "pg"
    url_from = settings.dotenv if settings.database_url and not environ.get("DATABASE_URL") else None
    return Target(settings.database_url, pgdata, url_from)


def embedded_exists(pgdata: Path) -> bool:
    return (pgdata / "PG_VERSION").is_file()


def embedded_running(pgdata: Path) -> bool:
    """Is a server up on this data directory (postmaster.pid names a live process)?"""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def no_database(settings: Settings, cwd: Path | None = None) -> CliError:
    cwd = (cwd or Path.cwd()).absolute()
    searched = ("SPENDGATE_DATA_DIR is set" if os.environ.get("SPENDGATE_DATA_DIR")
                else f"looked in {cwd} and its parents for a .env file or a .spendgate directory")
    return CliError(
        f"no database: DATABASE_URL is not set and there is no embedded database at {settings.data_dir / 'pg'} "
        f"({searched}). Run `spendgate migrate` (or `spendgate serve`) in your project directory to create one, "
        "or set DATABASE_URL, or SPENDGATE_DATA_DIR to an existing data directory.")


def database_url(t: Target) -> str:
    """The URL to connect to; starts the embedded server when it is not running (it must exist already)."""
    if t.url is not None:
        return t.url
    from gateway.db import embedded_database_url

    return embedded_database_url(t.pgdata.parent)


def migration_revisions(versions: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(heads, every revision) of the migration scripts, read from their `revision` / `down_revision` lines
    without importing Alembic (which alone takes longer to import than a whole read command should take)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        found: dict[str, Any] = {}
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for name in targets:
                if isinstance(name, ast.Name) and name.id in ("revision", "down_revision"):
                    found[name.id] = ast.literal_eval(value)
        if isinstance(found.get("revision"), str):
            revisions.add(found["revision"])
            down = found.get("down_revision")
            parents.update([down] if isinstance(down, str) else down or ())
    return frozenset(revisions - parents), frozenset(revisions)


async def connect(url: str) -> Database:
    import asyncpg

    from gateway.db import Database

    try:
        return await Database.connect(url, min_size=1, max_size=4)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CliError(f"cannot connect to the database: {exc}") from None


async def check_migrated(db: Database) -> None:
    """Refuse a database whose schema is not the one this version of spendgate migrates to."""
    import asyncpg

    from gateway.db import MIGRATIONS_DIR

    try:
        applied = {r["version_num"] for r in await db.pool.fetch("SELECT version_num FROM alembic_version")}
    except asyncpg.UndefinedTableError:
        applied = set()
    heads, known = migration_revisions(MIGRATIONS_DIR / "versions")
    if applied == heads:
        return
    if applied - known:
        raise CliError(f"the database was migrated by a newer spendgate (revision {', '.join(sorted(applied - known))})"
                       ": run this command with that version")
    raise CliError("database not migrated: run `spendgate migrate`")


class OperatorServices:
    """The admin endpoints' services (gateway.admin.api.AdminServices) for one command. Caches live as long as
    the command; running instances learn of every change through the database's NOTIFY, as with the API."""

    def __init__(self, settings: Settings, db: Database) -> None:
        from gateway.gateways import GatewayStore
        from gateway.ledger import Ledger
        from gateway.limits.store import LimitStore
        from gateway.providers.store import ProviderStore
        from gateway.routes.store import RouteStore
        from gateway.tokens import TokenStore

        self.settings = settings
        self.db = db
        self.gateways = GatewayStore(db)  # not started: no listener, the command is over in a moment
        self.ledger = Ledger(db)
        self.providers = ProviderStore(db, self.gateways)
        self.tokens = TokenStore(db, self.gateways)
        self.limit_store = LimitStore(db, self.gateways)
        self.route_store = RouteStore(db, self.gateways)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
