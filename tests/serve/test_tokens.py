"""serve.tokens: one-time host-key tokens, bound to an address, expiring, used once, bounded."""

from __future__ import annotations

from plasmaboot.serve.tokens import Refusal, Token, TokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_redeemed_once_by_its_machine_from_its_address() -> None:
    store = TokenStore(ttl=60, clock=Clock())
    token = store.issue("cp1", "10.0.0.5")
    assert len(token.value) >= 32 and token.boot != token.value
    assert store.redeem(token.value, "cp1", "10.0.0.5") is token
    assert store.redeem(token.value, "cp1", "10.0.0.5") is Refusal.USED  # a replay


def test_another_address_or_machine_cannot_use_it() -> None:
    store = TokenStore(ttl=60, clock=Clock())
    token = store.issue("cp1", "10.0.0.5")
    assert store.redeem(token.value, "cp1", "10.0.0.6") is Refusal.ADDRESS
    assert store.redeem(token.value, "cp2", "10.0.0.5") is Refusal.MACHINE
    assert store.redeem("made-up-token-value", "cp1", "10.0.0.5") is Refusal.UNKNOWN
    assert isinstance(store.redeem(token.value, "cp1", "10.0.0.5"), Token)  # still unused


def test_a_token_expires() -> None:
    clock = Clock()
    store = TokenStore(ttl=60, clock=clock)
    token = store.issue("cp1", "10.0.0.5")
    clock.now += 60
    assert store.redeem(token.value, "cp1", "10.0.0.5") is Refusal.EXPIRED
    assert store.redeem(token.value, "cp1", "10.0.0.5") is Refusal.UNKNOWN
    assert len(store) == 0


def test_a_new_script_revokes_the_machines_unused_token() -> None:
    store = TokenStore(ttl=60, clock=Clock())
    first = store.issue("cp1", "10.0.0.5")
    second = store.issue("cp1", "10.0.0.5")
    assert store.check(first.value, "cp1", "10.0.0.5") is Refusal.UNKNOWN
    assert store.check(second.value, "cp1", "10.0.0.5") is second


def test_the_store_is_bounded_expired_tokens_first_then_the_oldest() -> None:
    clock = Clock()
    store = TokenStore(ttl=60, limit=3, clock=clock)
    old = store.issue("a", "10.0.0.1")
    clock.now += 61  # `old` has expired
    kept = [store.issue(name, "10.0.0.1") for name in ("b", "c")]
    store.issue("d", "10.0.0.1")
    assert len(store) == 3
    assert store.check(old.value, "a", "10.0.0.1") is Refusal.UNKNOWN
    assert all(store.check(t.value, t.machine, "10.0.0.1") is t for t in kept)
    for index in range(100):
        store.issue(f"m{index}", "10.0.0.1")
    assert len(store) == 3
