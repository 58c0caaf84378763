"""Tokens, scopes and access rules, without a router."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fabric.errors import ConfigError, Unauthorized
from fabric.security.access import AccessRules
from fabric.security.tokens import Principal, TokenVerifier, mint
from fabric.settings import Settings

TYPES = ["PageDSL", "LogEntry", "SaaSRecord"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def verify(settings: Settings, token: str) -> Principal:
    return asyncio.run(TokenVerifier(settings).verify(f"Bearer {token}"))


def test_a_dev_token_round_trips_with_its_claims(settings: Settings) -> None:
    token = mint(settings, "acme", ["context:read:PageDSL", "events:write"], sub="bot", roles=["sre"])
    p = verify(settings, token)
    assert (p.tenant, p.sub, p.roles) == ("acme", "bot", frozenset({"sre"}))
    assert p.can_read("PageDSL") and not p.can_read("LogEntry") and p.can("events:write")
    assert not p.can("admin")


@pytest.mark.parametrize(
    ("scopes", "readable"),
    [
        (["context:read:*"], {"PageDSL", "LogEntry", "Composite"}),
        (["composites:read"], {"Composite"}),
        (["admin"], {"PageDSL", "LogEntry", "Composite"}),
        (["context:read:LogEntry"], {"LogEntry"}),
        ([], set()),
    ],
)
def test_scopes_decide_what_can_be_read(settings: Settings, scopes: list[str], readable: set[str]) -> None:
    p = verify(settings, mint(settings, "acme", scopes))
    assert {t for t in ("PageDSL", "LogEntry", "Composite") if p.can_read(t)} == readable


def test_bad_tokens_are_refused_with_the_reason(settings: Settings) -> None:
    v = TokenVerifier(settings)
    stranger = ec.generate_private_key(ec.SECP256R1())
    cases = {
        None: "missing bearer token",
        "Basic abc": "must be 'Bearer <token>'",
        "Bearer x.y.z": "malformed token",
        f"Bearer {mint(settings, 'acme', [], ttl_s=-60)}": "expired",
        f"Bearer {mint(settings, 'acme', [], key=stranger)}": "invalid token",
        f"Bearer {mint(settings, 'acme', [], extra={'aud': 'other'})}": "(?i)audience",
        f"Bearer {mint(settings, 'acme', [], kid='nope')}": "unknown key",
        f"Bearer {mint(settings, 'acme', [], extra={'tenant': 'a/b'})}": "tenant claim",
    }
    for header, reason in cases.items():
        with pytest.raises(Unauthorized, match=reason):
            asyncio.run(v.verify(header))


def test_a_cached_token_still_expires(settings: Settings) -> None:
    v = TokenVerifier(settings)
    token = mint(settings, "acme", [], ttl_s=1)
    p = asyncio.run(v.verify(f"Bearer {token}"))
    p.expires = 0  # as if its time had come
    with pytest.raises(Unauthorized, match="expired"):
        asyncio.run(v.verify(f"Bearer {token}"))


def who(roles: list[str]) -> Principal:
    return Principal("acme", "x", frozenset(roles), frozenset({"context:read:*"}), 1e12, "t")


def test_access_rules_by_sensitivity_and_type() -> None:
    rules = AccessRules.parse(
        {"rules": [
            {"name": "restricted", "when": {"sensitivity": "restricted"}, "require_any_role": ["sre", "security"]},
            {"name": "crm", "when": {"context_type": "SaaSRecord", "sensitivity": {"$in": ["confidential", "restricted"]}},
             "require_any_role": ["sales"]},
        ]},
        TYPES,
    )  # fmt: skip
    assert rules.denied_by(who([]), "PageDSL", 3) == "restricted"
    assert rules.denied_by(who(["sre"]), "PageDSL", 3) is None
    assert rules.denied_by(who([]), "PageDSL", 2) is None
    assert rules.denied_by(who(["sre"]), "SaaSRecord", 3) == "crm"  # every matching rule must hold
    assert rules.denied_by(who(["sre", "sales"]), "SaaSRecord", 3) is None
    assert rules.denied_by(who([]), "NewType", 3) == "restricted"  # types added later follow the generic rules
    assert rules.allowed_levels(who([]), "SaaSRecord") == frozenset({0, 1})


def test_bad_access_rules_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="require_any_role"):
        AccessRules.parse({"rules": [{"name": "r", "when": {}}]}, TYPES)
    with pytest.raises(ConfigError, match=r"unknown operator \$bogus"):
        AccessRules.parse({"rules": [{"name": "r", "when": {"x": {"$bogus": 1}}, "require_any_role": []}]}, TYPES)


def test_the_bundled_rules_load() -> None:
    rules = AccessRules.load(Settings().security.access_file, TYPES)
    assert [r.name for r in rules.rules] == ["restricted-needs-sre-or-security", "confidential-needs-staff"]


def test_rate_limit_leases_start_at_one_and_double_while_used_up() -> None:
    from fabric.errors import RateLimited
    from fabric.security.ratelimit import RateLimiter

    limiter = RateLimiter(None, "p", Settings().security)  # type: ignore[arg-type]
    w = who([])
    wants = []
    for _ in range(9):
        assert not limiter.take_local(w)
        cmd = limiter.command(w)
        wants.append(cmd[-2])
        limiter.settle(w, [cmd[-2], 0])  # granted in full
        while limiter.take_local(w):
            pass
    assert wants == [1, 2, 4, 8, 16, 32, 50, 50, 50]  # capped by the default token rate (1,000/s: 50)
    other = Principal("acme", "y", frozenset(), frozenset(), 1e12, "another-token")
    assert limiter.command(other)[-2] == 1  # a new caller starts small
    with pytest.raises(RateLimited) as e:
        limiter.settle(other, [0, 1500])
    assert e.value.retry_after == 2  # whole seconds for Retry-After


def test_rate_limit_leases_renewed_at_once_add_up_and_lapsed_ones_give_back() -> None:
    from fabric.security import ratelimit
    from fabric.security.ratelimit import RateLimiter

    limiter = RateLimiter(None, "p", Settings().security)  # type: ignore[arg-type]
    w = who([])
    # three requests found the lease empty at once; each renewal was granted 10 tokens
    for _ in range(3):
        limiter.settle(w, [10, 0])
    assert sum(1 for _ in iter(lambda: limiter.take_local(w), False)) == 27  # 30 less the 3 requests
    limiter.settle(w, [10, 0])
    limiter.leases["acme", w.token_id][1] = ratelimit.time.monotonic() - 1  # the lease lapsed, 9 unused
    cmd = limiter.command(w)
    assert cmd[-1] == 9 and limiter.leases["acme", w.token_id][0] == 0  # they go back with the renewal
