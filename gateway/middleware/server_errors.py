"""ServerErrors: an exception from any inner layer becomes a JSON error, if no byte of the answer was sent yet.

- The database unreachable (gateway/db.py `unavailable`: refused or dropped connection, server restarting, too
  many clients, a query timeout): `DatabaseUnavailable`, **503**
  `{"success": false, "error": {"message": "Database unavailable…", "retryable": true}}` with `Retry-After: 2`.
  The request was not forwarded (the layers that need the database — gateway config, keys, spend reservations,
  credit holds — all run before the upstream call), so it is safe to retry. This is how the gateway fails
  closed: unified billing and blocking rules always need the database.
- Anything else: `InternalError`, **500** `{"success": false, "error": {"message": "Internal error"}}`; the
  traceback goes to the process log with the request id, never to the client.

After the answer started (a stream), nothing can be said to the client any more: the exception is re-raised and
the server closes the connection, as Starlette's ServerErrorMiddleware does. Either way the pool is told about
a lost database (`connection_lost`), so it replaces its stale connections at once when the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.db import unavailable
from gateway.errors import DatabaseUnavailable, InternalError, to_response
from gateway.exchange import Exchange

log = logging.getLogger("spendgate.errors")

DB_RETRY_AFTER_S = 2


class ServerErrors:
    def __init__(self, app: ASGIApp, *, on_db_unavailable: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self.on_db_unavailable = on_db_unavailable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            db_down = unavailable(exc)
            if db_down:
                self.on_db_unavailable()
                log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            else:
                log.exception("unhandled error")
            if started:
                raise
            ex = Exchange.of(scope)
            error = DatabaseUnavailable(DB_RETRY_AFTER_S) if db_down else InternalError()
            answer = to_response(error)
            ex.status_code = answer.status
            ex.error = error.message if db_down else ex.error or f"internal error: {type(exc).__name__}"
            await answer.render()(scope, receive, send)
