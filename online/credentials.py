"""Who sent a feedback event, as the API vouches for it: a credential carried in signed Kafka headers.

Any Kafka client may produce to the feedback topic, and an event's ``source`` is a name anyone can
write. So trust never rests on a name. The API, which checks the admin token and the feedback keys,
puts what it checked on each record it produces:

- ``level``: ``admin`` (the admin token), ``key`` (the feedback key of the event's source), or ``""``
  (anonymous: feedback without keys);
- ``address``: the client address the API saw (anonymous feedback's only identity).

and signs it with HMAC-SHA256 over the credential and the record's value (header ``online-sig``), so a
header cannot be forged, nor moved onto another record, by a producer that is not the API. The signing
secret is ``ONLINE_FEEDBACK_SIGNING_KEY``, or else one random secret per stack kept in Redis (the API
and the consumers share the Redis; a Kafka client does not).

The consumer turns a credential into an *origin*: what the independence rules count (the screen's
"several sources agree", label corroboration, and the sources a verdict needs) and what one client
cannot fake by inventing names: ``admin``, ``key:<source>``, ``addr:<client address>``; a record not
signed by the API (another producer, or a bad signature) is one origin, ``unsigned``, whatever source
names it carries. An event is *trusted* when it came with the admin token, or with the key of a source
the operator trusts (``ONLINE_FEEDBACK_TRUSTED_KEYS``, or released by `online quarantine release
--source`): releasing a source trusts its key, never its name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import redis

Level = Literal["admin", "key", ""]
HEADER = "online-credential"
SIGNATURE = "online-sig"
UNSIGNED = "unsigned"


@dataclass(frozen=True)
class Credential:
    level: Level = ""
    address: str = ""
    signed: bool = False  # verified (the consumer's view); a credential the API made is signed when sent

    def origin(self, source: str) -> str:
        """What independence rules count for an event of ``source`` sent with this credential."""
        if not self.signed:
            return UNSIGNED
        if self.level == "admin":
            return "admin"
        if self.level == "key":
            return f"key:{source}"
        return f"addr:{self.address}" if self.address else UNSIGNED

    def trusted(self, source: str, trusted_keys: Iterable[str]) -> bool:
        """The admin token, or the key of a source whose key the operator trusts."""
        if not self.signed:
            return False
        return self.level == "admin" or (self.level == "key" and source in set(trusted_keys))


def anonymous(origin: str) -> bool:
    """Whether an origin is a client nobody vouches for: a client address (no key) or an unsigned record.
    What such a client sends under any number of names is one sender, and it cannot move what the live
    model confidently knows on its own say-so."""
    return origin == UNSIGNED or origin.startswith("addr:")


def sender(source: str, origin: str) -> str:
    """Whom the per-sender rules (the source ledger, the label rules) count for an event of ``source``
    from ``origin``: a keyless client by its origin, since the names it invents are one sender; anyone
    else by its source name (whose feedback key an operator can release)."""
    return origin if anonymous(origin) else source


class Signer:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, header: bytes, value: bytes) -> bytes:
        return hmac.new(self._secret, header + b"\x00" + value, hashlib.sha256).hexdigest().encode()

    def headers(self, credential: Credential, value: bytes) -> list[tuple[str, bytes]]:
        header = json.dumps({"level": credential.level, "address": credential.address}).encode()
        return [(HEADER, header), (SIGNATURE, self._mac(header, value))]

    def verify(self, headers: Sequence[tuple[str, bytes]] | None, value: bytes) -> Credential:
        """The credential of a record, or an unsigned one when absent or not the API's."""
        found = dict(headers or ())
        header, sig = found.get(HEADER), found.get(SIGNATURE)
        if not header or not sig or not hmac.compare_digest(self._mac(header, value), sig):
            return Credential()
        try:
            fields = json.loads(header)
            level = fields.get("level", "")
            if level not in ("admin", "key", ""):
                return Credential()
            return Credential(level, str(fields.get("address", ""))[:200], signed=True)
        except (ValueError, AttributeError):
            return Credential()


def signing_secret(configured: str | None, client: redis.Redis, key: str) -> bytes:
    """``configured`` (ONLINE_FEEDBACK_SIGNING_KEY), else the stack's random secret in Redis (made once)."""
    if configured:
        return configured.encode()
    client.set(key, secrets.token_hex(32), nx=True)
    return str(client.get(key)).encode()
