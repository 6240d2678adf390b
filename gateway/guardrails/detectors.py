"""The local detectors: one regular expression per category, checked by a validator where the shape has one (a
Luhn digit, an IBAN's mod-97, a phone number's numbering plan, a JWT's JSON header). Nothing leaves the process.

Every detector also declares what the stream redactor (gateway/guardrails/scanner.py) needs to hold back no more
of a stream than a match could still grow into:

- `chars`: a character class that holds every character a match can contain. A match that is still growing at
  the end of the text lies inside the trailing run of these characters, so text before that run is final.
- `starts`: the characters a match may begin with (a separator at the end of the text holds nothing back).
- `max_len`: the longest match. Text further back than that from the end is final whatever the run.
- `hint`: a cheap test that must hold for a match to exist (a literal, a digit), so that most texts skip most
  expressions.

Each pattern is bounded by look-arounds of one character, so a match is decided by its own characters and the
one on each side of it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban

from gateway.guardrails.categories import CATEGORIES


@dataclass(frozen=True)
class Detector:
    category: str
    pattern: re.Pattern[str]
    chars: str  # a regex character class body: every character a match may contain
    max_len: int
    hint: Callable[[str], bool]
    starts: str  # a character class body: the characters a match may begin with
    valid: Callable[[str], bool] = lambda text: True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", re.compile(f"[{self.chars}]*\\Z"))
        object.__setattr__(self, "first", re.compile(f"[{self.starts}]"))
        inside = re.compile(f"[{self.chars}]")
        object.__setattr__(self, "charset", frozenset(chr(i) for i in range(128) if inside.match(chr(i))))

    def final_from(self, text: str, start: int) -> int:
        """Where text that a match of this detector may still grow over begins (from `start` on): the first
        character that may begin a match, in the trailing run of characters a match may hold."""
        if not text or text[-1] not in self.charset:  # type: ignore[attr-defined]
            return len(text)  # the common case, decided without an expression
        floor = max(start, len(text) - self.max_len - 1)
        run = self.run.search(text, floor)  # type: ignore[attr-defined]
        if run is None:
            return len(text)
        first = self.first.search(text, run.start())  # type: ignore[attr-defined]
        return first.start() if first is not None else len(text)


# -- validators ---------------------------------------------------------------------------------------------------


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Published test numbers (card networks' and payment processors' documentation): in prose they are examples, not
# anyone's card.
TEST_CARDS = frozenset({
    "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556", "4222222222222",
    "5555555555554444", "5105105105105100", "5200828282828210", "2223003122003222", "378282246310005",
    "371449635398431", "378734493671000", "6011111111111117", "6011000990139424", "3056930009020004",
    "36227206271667", "3566002020360505", "6200000000000005", "4000000000000002", "4000000000009995",
    "4000000000000077", "4000002500003155", "4000000000003220", "5454545454545454", "4444333322221111",
})


def _card(text: str) -> bool:
    separators = {c for c in text if not c.isdigit()}
    if len(separators) > 1:
        return False
    digits = "".join(c for c in text if c.isdigit())
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456" or len(set(digits)) == 1:
        return False
    return luhn(digits) and digits not in TEST_CARDS


def _iban(text: str) -> bool:
    return bool(stdnum_iban.is_valid(text.replace(" ", "")))


_REGIONS = ("GB", "DE", "FR", "IT", "ES", "NL", "BE", "CH", "AT", "IE", "SE", "IN", "AU", "BR", "JP")


def _phone(text: str) -> bool:
    try:
        if text.startswith("+"):
            return bool(phonenumbers.is_valid_number(phonenumbers.parse(text, None)))
        if text.startswith("0"):
            if sum(c.isdigit() for c in text) < 9:  # shorter runs are mostly parts of other numbers
                return False
            return any(phonenumbers.is_valid_number(phonenumbers.parse(text, region)) for region in _REGIONS)
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(text, "US")))
    except phonenumbers.NumberParseException:
        return False


def _ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if address.version == 6:
        return sum(1 for group in text.split(":") if group) >= 3
    return True


def _jwt(text: str) -> bool:
    head = text.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def _mixed(text: str) -> bool:
    """A random key body has digits and letters; a word in prose (`sk-learn-style-names`) rarely both."""
    body = text.split("-", 1)[-1]
    return any(c.isdigit() for c in body) and any(c.isalpha() for c in body)


def _has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


_DIGIT = re.compile(r"\d")


def _contains(*needles: str) -> Callable[[str], bool]:
    if len(needles) == 1:
        needle = needles[0]
        return lambda text: needle in text
    search = re.compile("|".join(re.escape(n) for n in needles)).search
    return lambda text: search(text) is not None


# -- the detectors ------------------------------------------------------------------------------------------------

_WORD = "A-Za-z0-9_"
_KEY = "A-Za-z0-9_\\-"

DETECTORS: tuple[Detector, ...] = (
    Detector("secret.private_key",
             re.compile(r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----"),
             "A-Z0-9 -", 75, _contains("-----BEGIN"), "-"),
    Detector("secret.provider_key", re.compile(
        r"(?<![\w-])(?:sk-ant-(?:api|admin|sid)\d{2}-[A-Za-z0-9_-]{32,200}"
        r"|sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}"
        r"|AIza[0-9A-Za-z_-]{35}"
        r"|xai-[A-Za-z0-9]{40,100}"
        r"|gsk_[A-Za-z0-9]{40,60})(?![\w-])"),
        _KEY, 220, _contains("sk-", "AIza", "xai-", "gsk_"), "sAxg", _mixed),
    Detector("secret.aws", re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
             "A-Z0-9", 20, _contains("AKIA", "ASIA", "ABIA", "ACCA"), "A"),
    Detector("secret.github", re.compile(
        r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{50,255})(?![\w])"),
        _WORD, 266, _contains("gh", "github_pat_"), "g"),
    Detector("secret.slack", re.compile(
        r"(?<![\w-])(?:xox[abeoprs]-[A-Za-z0-9-]{10,250}|xapp-\d-[A-Za-z0-9-]{10,250})(?![\w-])"
        r"|https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,200}"),
        _KEY + ":/.", 260, _contains("xox", "xapp-", "hooks.slack.com"), "xh"),
    Detector("secret.jwt", re.compile(
        r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,2000}\.eyJ[A-Za-z0-9_-]{2,6000}\.[A-Za-z0-9_-]{0,2000}(?![\w-])"),
        _KEY + ".", 10010, _contains("eyJ"), "e", _jwt),
    Detector("pii.email", re.compile(
        r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
        r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,4}[A-Za-z]{2,24}(?![A-Za-z0-9-])"),
        _WORD + ".%+@-", 350, _contains("@"), "A-Za-z0-9"),
    Detector("pii.iban", re.compile(
        r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
        "A-Z0-9 ", 44, _has_digit, "A-Z", _iban),
    Detector("pii.card", re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|[ -]\d)"),
             "0-9 -", 37, _has_digit, "0-9", _card),
    Detector("pii.ssn", re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])"),
             "0-9-", 11, _contains("-"), "0-9"),
    Detector("pii.phone", re.compile(
        r"(?<![\w+.-])(?<!\d[ .-])(?:\+[1-9](?:[ .-]?\(?\d\)?){6,14}"
        r"|\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"
        r"|0\d{1,4}[ .-]\d{2,8}(?:[ .-]\d{2,5}){0,4})(?![\w-]|[ .-]\d)"),
        "0-9 ().+-", 60, _has_digit, "0-9+(", _phone),
    Detector("pii.ip", re.compile(
        r"(?<![\w.:])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w:]|\.\d)"
        r"|(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
        "0-9A-Fa-f.:", 45, _contains(".", ":"), "0-9A-Fa-f:", _ip),
)

assert tuple(sorted(d.category for d in DETECTORS)) == CATEGORIES
BY_CATEGORY = {d.category: d for d in DETECTORS}

# The private key's block ends here (everything from its BEGIN line to this line is redacted as one match).
PRIVATE_KEY_END = re.compile(r"-----END (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
PRIVATE_KEY_END_MAX = 75
