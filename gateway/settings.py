"""Configuration from the environment (and a `.env` file). The variable names are public interface
(README, "Running it in production").

Where the `.env` file and the embedded database's data directory are, the same from any working directory inside a
project (`locate_project`):
- `SPENDGATE_DATA_DIR` set in the environment pins the project: the directory that holds the data directory, and
  the `.env` there if there is one;
- otherwise the project is the nearest directory, the current one or a parent (as git finds `.git`), that holds a
  `.env` file or a `.spendgate` directory; failing both, the current directory;
- the data directory is `SPENDGATE_DATA_DIR` (a relative path counts from the directory of the `.env` that set it,
  else from the current directory) or `<project>/.spendgate`. Real environment variables win over the `.env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROVIDERS = ("openai", "anthropic", "google-ai-studio", "grok", "groq")

DEFAULT_UPSTREAMS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "google-ai-studio": "https://generativelanguage.googleapis.com",
    "grok": "https://api.x.ai",
    "groq": "https://api.groq.com/openai/v1",
}


def env_name(provider: str) -> str:
    """`google-ai-studio` -> `GOOGLE_AI_STUDIO`, the suffix of SPENDGATE_UPSTREAM_<P> and SPENDGATE_KEY_<P>."""
    return provider.upper().replace("-", "_")


def read_dotenv(path: Path) -> dict[str, str]:
    """A minimal .env reader: KEY=VALUE lines, optional quotes, # comments. Real environment wins."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


DATA_DIR_NAME = ".spendgate"
DOTENV_NAME = ".env"


@dataclass(frozen=True)
class Project:
    """Where settings come from: the project directory, its `.env` file (None: none was found) and why."""

    root: Path
    dotenv: Path | None
    reason: str  # "SPENDGATE_DATA_DIR", "found" (a .env or .spendgate here or above) or "cwd"


def locate_project(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Project:
    """The project directory and its `.env` (module docstring). Reads only the file system, never creates."""
    environ = os.environ if environ is None else environ
    cwd = (cwd or Path.cwd()).absolute()
    pinned = environ.get("SPENDGATE_DATA_DIR")
    if pinned:
        root = (cwd / pinned).resolve().parent
        dotenv = root / DOTENV_NAME
        return Project(root, dotenv if dotenv.is_file() else None, "SPENDGATE_DATA_DIR")
    for directory in (cwd, *cwd.parents):
        dotenv = directory / DOTENV_NAME
        if dotenv.is_file() or (directory / DATA_DIR_NAME).is_dir():
            return Project(directory, dotenv if dotenv.is_file() else None, "found")
    return Project(cwd, None, "cwd")


@dataclass(frozen=True)
class ProviderConfig:
    """Where a provider lives and the gateway's own keys for it (unified billing), standard and ZDR."""

    name: str
    upstream: str
    key: str | None = None
    zdr_upstream: str | None = None
    zdr_key: str | None = None


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(DATA_DIR_NAME)
    dotenv: Path | None = None  # the .env file these settings were read from, if any
    host: str = "127.0.0.1"
    port: int = 8787
    workers: int = 1
    admin_token: str | None = None
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    access_team: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: tuple[str, ...] = ()
    jwks_url: str | None = None
    jwt_groups_claim: str = "groups"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    max_body_bytes: int = 32 * 1024 * 1024  # request bodies, once decoded too (413 past it)
    db_pool_min: int = 2
    db_pool_max: int = 20
    hold_ttl_seconds: int = 900  # a reservation the sweeper may expire after this (its instance died)
    sweep_interval_seconds: float = 5.0
    # what happens while the database is unreachable: "fail_closed" (503 for everything that needs it) or
    # "fail_open_byok" (BYOK requests without blocking rules pass on the last known configuration)
    db_unavailable: str = "fail_closed"
    shutdown_timeout_seconds: float = 30.0  # SIGTERM: in-flight requests (streams too) get this long to finish
    otel: bool = False  # one OpenTelemetry span per request (needs the `tracing` extra)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv: Path | bool | None = True,
                 cwd: Path | None = None) -> Settings:
        """Settings from `environ` (default: the process environment) over a `.env` file: the project's
        (`locate_project`) when `dotenv` is True, that file when it is a path, none when it is None or False."""
        environ = os.environ if environ is None else environ
        cwd = (cwd or Path.cwd()).absolute()
        project = locate_project(environ, cwd)
        dotenv_path = project.dotenv if dotenv is True else dotenv if isinstance(dotenv, Path) else None
        file_values = read_dotenv(dotenv_path) if dotenv_path is not None else {}
        env: dict[str, str] = {**file_values, **environ}
        if dotenv_path is not None and not dotenv_path.is_file():
            dotenv_path = None

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        providers = {}
        for p in PROVIDERS:
            suffix = env_name(p)
            key = get(f"SPENDGATE_KEY_{suffix}")
            providers[p] = ProviderConfig(
                name=p,
                upstream=(get(f"SPENDGATE_UPSTREAM_{suffix}") or DEFAULT_UPSTREAMS[p]).rstrip("/"),
                key=key,
                zdr_upstream=(get(f"SPENDGATE_UPSTREAM_{suffix}_ZDR") or "").rstrip("/") or None,
                zdr_key=get(f"SPENDGATE_KEY_{suffix}_ZDR") or key,
            )
        audience = get("SPENDGATE_JWT_AUDIENCE") or ""
        proxies = get("SPENDGATE_TRUSTED_PROXIES")
        return cls(
            database_url=get("DATABASE_URL"),
            data_dir=_data_dir(environ.get("SPENDGATE_DATA_DIR") or None, file_values.get("SPENDGATE_DATA_DIR") or None,
                               dotenv_path, project.root, cwd),
            dotenv=dotenv_path,
            host=get("SPENDGATE_HOST") or "127.0.0.1",
            port=int(get("SPENDGATE_PORT") or 8787),
            workers=int(get("SPENDGATE_WORKERS") or 1),
            admin_token=get("SPENDGATE_ADMIN_TOKEN"),
            providers=providers,
            access_team=get("SPENDGATE_ACCESS_TEAM"),
            jwt_issuer=get("SPENDGATE_JWT_ISSUER"),
            jwt_audience=tuple(a.strip() for a in audience.split(",") if a.strip()),
            jwks_url=get("SPENDGATE_JWKS_URL"),
            jwt_groups_claim=get("SPENDGATE_JWT_GROUPS_CLAIM") or "groups",
            trusted_proxies=tuple(p.strip() for p in (proxies or "127.0.0.1,::1").split(",") if p.strip()),
            max_body_bytes=int(get("SPENDGATE_MAX_BODY_BYTES") or 32 * 1024 * 1024),
            db_pool_max=int(get("SPENDGATE_DB_POOL_MAX") or 20),
            hold_ttl_seconds=int(get("SPENDGATE_HOLD_TTL_SECONDS") or 900),
            sweep_interval_seconds=float(get("SPENDGATE_SWEEP_INTERVAL_S") or 5.0),
            db_unavailable=_choice(get("SPENDGATE_DB_UNAVAILABLE") or "fail_closed", "SPENDGATE_DB_UNAVAILABLE",
                                   ("fail_closed", "fail_open_byok")),
            shutdown_timeout_seconds=float(get("SPENDGATE_SHUTDOWN_TIMEOUT_S") or 30.0),
            otel=(get("SPENDGATE_OTEL") or "false").lower() in ("1", "true", "yes"),
        )


def _data_dir(from_environ: str | None, from_dotenv: str | None, dotenv: Path | None, root: Path, cwd: Path) -> Path:
    """Absolute: the environment's SPENDGATE_DATA_DIR (relative to the current directory), else the .env's (relative
    to that file's directory), else the project's `.spendgate`."""
    if from_environ:
        return (cwd / from_environ).resolve()
    if from_dotenv and dotenv is not None:
        return (dotenv.parent / from_dotenv).resolve()
    return (root / DATA_DIR_NAME).resolve()
