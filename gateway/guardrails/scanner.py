"""The redactor: finds the detectors' matches in a text that may arrive in pieces, and rewrites them.

One algorithm serves a whole text and a stream alike (`redact` is `feed` of everything, then `finish`), and the
output does not depend on where the pieces were cut: text is released only once no match can still change it.

- Each detector's expression is run with `finditer` from where the released text ends. Its candidates (valid or
  not) are what decide where the next release may stop: never inside a candidate, never inside the trailing run
  of characters a match of that detector could still grow over (gateway/guardrails/detectors.py `final_from`).
  So in ordinary prose the held-back text is the last word or number; a long token being written (a JWT, a key)
  is held until it ends, and never more than the longest match.
- Valid matches that overlap are resolved leftmost first, then in the detectors' order (secrets before personal
  data: a token before the email it looks like in `https://<token>@github.com`), then longest.
- A replaced match becomes `[REDACTED:<category>]`. A replaced private key's BEGIN line starts a block that is
  dropped through its END line (or to the end of the text): the key's body has no shape of its own to find.
- `stop_on`: categories that end the text at their match (a blocked answer): nothing from the match on is
  released, and `stopped` names the category.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from gateway.guardrails.detectors import DETECTORS, PRIVATE_KEY_END, PRIVATE_KEY_END_MAX, Detector

ORDER = {d.category: i for i, d in enumerate(DETECTORS)}  # overlapping matches: secrets before personal data
CONTEXT = 8  # characters kept before the unreleased text, for the expressions' look-behinds


@dataclass(frozen=True)
class Rules:
    """What a redactor looks for, and what it does with a match: `replace` categories are rewritten, `stop_on`
    categories end the text; the others are only reported (flag)."""

    detectors: tuple[Detector, ...]
    replace: frozenset[str] = frozenset()
    stop_on: frozenset[str] = frozenset()

    @classmethod
    def of(cls, categories: set[str] | frozenset[str], replace: set[str] | frozenset[str] = frozenset(),
           stop_on: set[str] | frozenset[str] = frozenset()) -> Rules:
        return cls(tuple(d for d in DETECTORS if d.category in categories), frozenset(replace), frozenset(stop_on))

    @property
    def rewrites(self) -> bool:
        return bool(self.replace or self.stop_on)

    @functools.cached_property
    def growing(self) -> dict[str, tuple[Detector, ...]]:
        """Last character -> the detectors a match of which may still be growing at a text ending with it."""
        return {chr(i): tuple(d for d in self.detectors if chr(i) in d.charset)  # type: ignore[attr-defined]
                for i in range(128)}


def token(category: str) -> str:
    return f"[REDACTED:{category}]"


class Redactor:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.buf = ""
        self.pos = 0  # buf[:pos] was released (kept only as look-behind context)
        self.in_key = False
        self.stopped: str | None = None
        self.found: dict[str, int] = {}  # category -> matches, in the order first found
        self.spans: list[tuple[int, int, str]] = []  # (start, end, category) of each match; positions are the
        # text's only for a whole text (`redact`), a stream's buffer is trimmed as it is released

    @property
    def held(self) -> int:
        """Characters fed but not released yet."""
        return len(self.buf) - self.pos

    def feed(self, text: str) -> str:
        if self.stopped is not None:
            return ""
        self.buf += text
        return self._advance(final=False)

    def finish(self) -> str:
        if self.stopped is not None:
            return ""
        return self._advance(final=True)

    def redact(self, text: str) -> str:
        """A whole text (a fresh redactor's only call)."""
        self.buf = text
        return self._advance(final=True)

    # -- the algorithm ---------------------------------------------------------------------------------------

    def _advance(self, final: bool) -> str:
        out: list[str] = []
        buf = self.buf
        while True:
            if self.in_key:
                closing = PRIVATE_KEY_END.search(buf, self.pos)
                if closing is not None:
                    self.pos, self.in_key = closing.end(), False
                    self._extend_key(closing.end())
                    continue
                self.pos = len(buf) if final else max(self.pos, len(buf) - PRIVATE_KEY_END_MAX)
                if final:
                    self._extend_key(len(buf))
                break
            candidates = self._candidates(buf)
            cut = len(buf) if final else self._cut(buf, candidates)
            chosen = self._resolve(buf, candidates, cut)
            restart = False
            at = self.pos
            for start, end, detector in chosen:
                category = detector.category
                self.found[category] = self.found.get(category, 0) + 1
                self.spans.append((start, end, category))
                out.append(buf[at:start])
                if category in self.rules.stop_on:
                    self.stopped = category
                    self.pos = len(buf)
                    self._trim()
                    return "".join(out)
                out.append(token(category) if category in self.rules.replace else buf[start:end])
                at = end
                if category == "secret.private_key" and category in self.rules.replace:
                    self.pos, self.in_key, restart = end, True, True
                    break
            if restart:
                continue
            out.append(buf[at:cut])
            self.pos = cut
            break
        self._trim()
        return "".join(out)

    def _extend_key(self, end: int) -> None:
        """The key's span runs through its END line (whole texts: a stream's positions move as it is trimmed)."""
        if self.spans and self.spans[-1][2] == "secret.private_key":
            self.spans[-1] = (self.spans[-1][0], end, "secret.private_key")

    def _candidates(self, buf: str) -> list[tuple[int, int, Detector]]:
        found: list[tuple[int, int, Detector]] = []
        for detector in self.rules.detectors:
            if detector.hint(buf):
                found += [(m.start(), m.end(), detector) for m in detector.pattern.finditer(buf, self.pos)]
        return found

    def _cut(self, buf: str, candidates: list[tuple[int, int, Detector]]) -> int:
        """The end of what may be released: before any match that may still grow, and never inside a candidate."""
        last = buf[-1] if buf else ""
        growing = self.rules.growing.get(last, self.rules.detectors) if last else ()
        cut = min((d.final_from(buf, self.pos) for d in growing), default=len(buf))
        moved = True
        while moved:
            moved = False
            for start, end, _ in candidates:
                if start < cut < end:
                    cut, moved = start, True
        return cut

    @staticmethod
    def _resolve(buf: str, candidates: list[tuple[int, int, Detector]], cut: int) -> list[tuple[int, int, Detector]]:
        if not candidates:
            return []
        valid = sorted(((s, e, d) for s, e, d in candidates if e <= cut and d.valid(buf[s:e])),
                       key=lambda c: (c[0], ORDER[c[2].category], c[0] - c[1]))
        chosen: list[tuple[int, int, Detector]] = []
        last = -1
        for s, e, d in valid:
            if s >= last:
                chosen.append((s, e, d))
                last = e
        return chosen

    def _trim(self) -> None:
        drop = self.pos - CONTEXT
        if drop > 0:
            self.buf = self.buf[drop:]
            self.pos -= drop


def find(text: str, rules: Rules) -> list[tuple[int, int, str]]:
    """Every match in a whole text: (start, end, category)."""
    redactor = Redactor(rules)
    redactor.redact(text)
    return redactor.spans


def redact(text: str, rules: Rules) -> tuple[str, dict[str, int]]:
    """A whole text redacted, and the categories found in it (with their counts)."""
    if not text or not rules.detectors:
        return text, {}
    redactor = Redactor(rules)
    out = redactor.redact(text)
    if not redactor.found:
        return text, {}
    return out, redactor.found
