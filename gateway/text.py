"""Text from outside (admin input, identity claims) that the gateway stores or shows: what it must not contain.

Control characters (C0 and DEL) and lone surrogates are refused: Postgres cannot store NUL in text or JSONB, UTF-8
cannot encode a lone surrogate, and a newline or carriage return in an id, a name or an e-mail address is never
meant and breaks logs and headers built from it.
"""

from __future__ import annotations

import re

_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return f"contains a control character or an invalid code point (U+{ord(found.group()):04X})"
