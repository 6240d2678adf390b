"""The JSON error every layer answers with: {"success": false, "error": {"message": ..., ...}}."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


def json_error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    error: dict[str, Any] = {"message": message}
    error.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"success": False, "error": error}, status_code=status, headers=headers)
