"""How operator commands print their results for people: lists as aligned tables, single objects as aligned
`name  value` lines. `--json` prints the API's `result` instead (gateway/admin/cli.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def cell(value: Any) -> str:
    """One value as table text: `-` for nothing, yes/no, ISO times shortened to the second (UTC), JSON for the rest."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return short_time(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def short_time(text: str) -> str:
    """`2026-11-02T10:04:05.123456+00:00` -> `2026-11-02 10:04:05Z`; any other text unchanged."""
    if len(text) >= 25 and text[4] == "-" and text[10] == "T" and text.endswith("+00:00"):
        return text[:10] + " " + text[11:19] + "Z"
    return text


def field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Left-aligned columns two spaces apart, a header row first; `(none)` under it when there is no row."""
    body = [[cell(get(row)).replace("\n", " ") for _, get in columns] for row in rows]
    widths = [max([len(header), *(len(r[i]) for r in body)]) for i, (header, _) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    if not body:
        lines.append("(none)")
    return "\n".join(lines)


def record(obj: dict[str, Any]) -> str:
    """One object as `name  value` lines, names aligned; nested values as one line of JSON."""
    if not obj:
        return "(empty)"
    width = max(len(k) for k in obj)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}".rstrip() for k, v in obj.items())


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
