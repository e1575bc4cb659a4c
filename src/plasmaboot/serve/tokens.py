"""One-time host-key tokens: issued with a machine's boot script, bound to the address that
fetched it, valid for minutes, redeemed once by the host-key report from that address.

A machine has at most one token it has not used: a new script revokes the previous one. A
used token is remembered until it expires, so a replayed report is told "already used"
(409); after that it is unknown (403). The store is bounded (MAX_TOKENS): when full, expired
tokens go first, then the oldest.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_TTL = 15 * 60.0  # seconds: a TCG boot takes minutes from script to sshd
MAX_TOKENS = 4096


@dataclass
class Token:
    value: str
    machine: str
    address: str  # the address the script went to; the report must come from it
    expires: float
    used: bool = False

    @property
    def boot(self) -> str:
        """An id of this boot for the records: a digest of the token, never the token."""
        return hashlib.sha256(self.value.encode()).hexdigest()[:16]


class Refusal(StrEnum):
    """Why a token was not accepted (the one-line log says it)."""

    UNKNOWN = "unknown or expired token"
    EXPIRED = "token expired"
    USED = "token already used"
    MACHINE = "token issued to another machine"
    ADDRESS = "not from the address the token was issued to"


class TokenStore:
    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        limit: int = MAX_TOKENS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self._tokens: dict[str, Token] = {}  # in issue order

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, machine: str, address: str) -> Token:
        """A fresh token for `machine`, bound to `address`; its unused ones are revoked."""
        stale = [t.value for t in self._tokens.values() if t.machine == machine and not t.used]
        for value in stale:
            del self._tokens[value]
        self._make_room()
        token = Token(secrets.token_urlsafe(24), machine, address, self.clock() + self.ttl)
        self._tokens[token.value] = token
        return token

    def _make_room(self) -> None:
        now = self.clock()
        if len(self._tokens) < self.limit:
            return
        for value in [v for v, t in self._tokens.items() if t.expires <= now]:
            del self._tokens[value]
        while len(self._tokens) >= self.limit:
            del self._tokens[next(iter(self._tokens))]

    def check(self, value: str, machine: str, address: str) -> Token | Refusal:
        """The token if `value` may be used now by `machine` from `address`."""
        token = self._tokens.get(value)
        if token is None:
            return Refusal.UNKNOWN
        if token.expires <= self.clock():
            del self._tokens[value]
            return Refusal.EXPIRED
        if token.used:
            return Refusal.USED
        if token.machine != machine:
            return Refusal.MACHINE
        if token.address != address:
            return Refusal.ADDRESS
        return token

    def redeem(self, value: str, machine: str, address: str) -> Token | Refusal:
        """Use the token once (a host-key report)."""
        found = self.check(value, machine, address)
        if isinstance(found, Token):
            found.used = True
        return found
