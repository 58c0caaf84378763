"""The console's OIDC discovery checks (fabric.router.signin)."""

from __future__ import annotations

from fabric.router.signin import ConsoleSignIn, discovery_problem, origin
from fabric.settings import SecuritySettings

ISSUER = "https://id.example.com/realms/acme"
GOOD = {"issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/auth", "token_endpoint": "https://tokens.example.com/t",
        "code_challenge_methods_supported": ["plain", "S256"]}  # fmt: skip


def test_a_discovery_document_must_be_the_issuers_and_offer_s256() -> None:
    assert discovery_problem(GOOD, ISSUER) == ""
    assert "names issuer" in discovery_problem({**GOOD, "issuer": "https://evil.example.com"}, ISSUER)
    assert (
        discovery_problem({**GOOD, "token_endpoint": "javascript:alert(1)"}, ISSUER) == "has no usable token_endpoint"
    )
    assert discovery_problem({**GOOD, "code_challenge_methods_supported": ["plain"]}, ISSUER).endswith("S256")
    assert discovery_problem([], ISSUER) == "is not a JSON object"


def test_sign_in_is_offered_only_against_a_real_issuer() -> None:
    assert not ConsoleSignIn(SecuritySettings(oidc_client_id="console")).enabled  # the dev issuer
    sec = SecuritySettings(oidc_client_id="console", issuer=ISSUER, jwks_url=f"{ISSUER}/jwks")
    signin = ConsoleSignIn(sec)
    assert signin.enabled and signin.connect_sources() == ["https://id.example.com"]
    assert origin("https://tokens.example.com:8443/t?x=1") == "https://tokens.example.com:8443"
