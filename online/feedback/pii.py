"""PII masking applied before any user text is stored (prediction log, replay buffer, review queue,
correction log), with the same masker on every path, so the model trains on what serving logs.

Each kind is found precisely, so amounts, dates, order numbers and times survive:

- e-mail addresses (``<EMAIL>``);
- IBANs (``<IBAN>``), checked with their mod-97 checksum;
- card numbers (``<CARD>``), checked with Luhn;
- IP addresses (``<IP>``), IPv4 and IPv6, checked with :mod:`ipaddress`;
- phone numbers (``<PHONE>``) by Google's libphonenumber (``phonenumbers``): a number must be *valid*
  for one of ``ONLINE_PII_PHONE_REGIONS`` (or carry its country code), which "transfer 1500000 dollars"
  or "2024-03-15" never is;
- the operator's own patterns (``ONLINE_PII_PATTERNS``: ``{"KIND": "regex"}`` -> ``<KIND>``).

``ONLINE_PII_MASK=false`` turns masking off (e.g. data that is already anonymised). Names are not masked:
no pattern finds them reliably; an NER model would, at a cost per text this product does not pay.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

import phonenumbers

EMAIL = "<EMAIL>"
PHONE = "<PHONE>"
CARD = "<CARD>"
IBAN = "<IBAN>"
IP = "<IP>"

# An e-mail address is ``[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}``, found from each ``@`` outwards
# (``_emails``): as one regex, Python's engine tries every start of a long run of address characters
# and backtracks over the rest of the run each time, quadratic in the run (10,000 characters: ~100 ms).
_LOCAL_RUN = re.compile(r"[A-Za-z0-9._%+-]*")  # matched on the reversed text: the local part before an @
_DOMAIN_RUN = re.compile(r"[A-Za-z0-9.-]*")
_LETTERS = re.compile(r"[A-Za-z]*")
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD_RE = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_DIGITS_7 = re.compile(r"(?:\d\D{0,3}){7}")  # a phone number has at least 7 digits: most texts skip the parser
# Every kind above has a digit, an @ or a colon in it: a text with none of them (most questions) skips
# the five passes (6-11 us a text on the serving side-effect thread, issue 34)
_MAYBE_PII = re.compile(r"[\d@:]")


def _emails(text: str) -> str:
    """Replace e-mail addresses, in one pass: linear in the text, the same matches as the regex above
    applied with ``re.sub`` (leftmost, longest domain ending in a dot and two or more letters)."""
    at = text.find("@")
    if at < 0:
        return text
    rev = text[::-1]
    n = len(text)
    out: list[str] = []
    pos = 0  # end of the last match: the next local part starts at or after it
    while at >= 0:
        local = len(_LOCAL_RUN.match(rev, n - at).group())  # the run of local-part characters before the @
        start = max(at - local, pos)
        domain = _DOMAIN_RUN.match(text, at + 1).group()
        end = -1
        dot = domain.rfind(".")
        while dot >= 1:  # the last dot (not the first character) followed by two letters ends the match
            letters = len(_LETTERS.match(domain, dot + 1).group())
            if letters >= 2:
                end = at + 1 + dot + 1 + letters
                break
            dot = domain.rfind(".", 0, dot)
        if start < at and end > 0:
            out += [text[pos:start], EMAIL]
            pos = end
        at = text.find("@", max(at + 1, pos))
    out.append(text[pos:])
    return "".join(out)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(raw: str) -> bool:
    s = raw.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return CARD if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group()


def _ip(match: re.Match[str]) -> str:
    try:
        ipaddress.ip_address(match.group())
    except ValueError:
        return match.group()  # a time (10:30:15), a version (1.2.3.4000): not an address
    return IP


class PiiMasker:
    """Replace the PII kinds above with placeholders; one instance per process, built from settings."""

    def __init__(
        self, enabled: bool = True, regions: Iterable[str] = ("US",), patterns: Mapping[str, str] | None = None
    ) -> None:
        self.enabled = enabled
        self.regions = [r.upper() for r in regions] or ["US"]
        self.patterns = [(re.compile(rx), f"<{kind.upper()}>") for kind, rx in (patterns or {}).items()]

    def __call__(self, text: str) -> str:
        if not self.enabled:
            return text
        if _MAYBE_PII.search(text):
            text = self._builtin(text)
        for rx, placeholder in self.patterns:
            text = rx.sub(placeholder, text)
        return text

    def _builtin(self, text: str) -> str:
        text = _emails(text)
        text = _IBAN_RE.sub(lambda m: IBAN if _iban_ok(m.group()) else m.group(), text)
        text = _CARD_RE.sub(_card, text)
        text = _IPV4_RE.sub(_ip, text)
        text = _IPV6_RE.sub(_ip, text)
        if _DIGITS_7.search(text):
            text = self._phones(text)
        return text

    def _phones(self, text: str) -> str:
        for region in self.regions:
            spans = [
                (m.start, m.end)
                for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)
            ]
            for start, end in reversed(spans):
                text = text[:start] + PHONE + text[end:]
        return text


_masker = PiiMasker()


def configure(enabled: bool, regions: Iterable[str], patterns: Mapping[str, str]) -> None:
    """Set this process's masker (called once, where the process builds its stores from settings)."""
    global _masker
    _masker = PiiMasker(enabled, regions, patterns)


def mask_pii(text: str) -> str:
    """The process's masker applied to ``text``."""
    return _masker(text)
