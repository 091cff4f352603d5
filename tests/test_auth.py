"""roomcast.auth: tokens signed here with PyJWT and keys generated here with cryptography.

Every rejection test also checks the reason, so a check that stopped running (and let the
token through, or failed for another reason) would fail the test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from roomcast.auth import (
    AuthConfig,
    Authenticator,
    Claims,
    require,
    token_from_request,
)
from roomcast.errors import PermissionDenied, Unauthorized

SECRET = "s3cret-that-is-long-enough-for-hs256!"
NOW = 1_700_000_000.0


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """Build a JWT by hand: PyJWT itself refuses to produce the attacks tested here."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if hmac_key is None:
        return signing_input + "."
    mac = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def hs(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def _reason(excinfo: pytest.ExceptionInfo[Unauthorized]) -> str:
    return str(excinfo.value)


# --- valid tokens ---------------------------------------------------------------------------


def test_hs256_valid_token_gives_claims() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET))
    payload = {"sub": "u1", "exp": NOW + 60, "rooms": {"subscribe": ["chat:*"], "publish": []}}
    claims = auth.verify(hs(payload), now=NOW)
    assert claims.subject == "u1"
    assert claims.expires_at == NOW + 60
    assert claims.subscribe == ("chat:*",)
    assert claims.publish == ()
    assert claims.raw["sub"] == "u1"


def test_rs256_valid_token(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = Authenticator(AuthConfig(public_key=_public_pem(rsa_key)))
    token = jwt.encode({"sub": "u2"}, _private_pem(rsa_key), algorithm="RS256")
    claims = auth.verify(token, now=NOW)
    assert claims.subject == "u2"
    assert claims.expires_at is None
    assert auth.algorithms == ("RS256",)


def test_es256_valid_token(ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator(AuthConfig(public_key=_public_pem(ec_key)))
    token = jwt.encode({"sub": "u3", "exp": NOW + 5}, _private_pem(ec_key), algorithm="ES256")
    assert auth.verify(token, now=NOW).subject == "u3"
    assert auth.algorithms == ("ES256",)


def test_claims_raw_is_read_only() -> None:
    claims = Authenticator(AuthConfig(secret=SECRET)).verify(hs({"sub": "u", "email": "a@b.c"}))
    assert claims.raw["email"] == "a@b.c"
    with pytest.raises(TypeError):
        claims.raw["email"] = "x"  # type: ignore[index]
    built = Claims(subject=None, expires_at=None, subscribe=(), publish=(), raw={"a": 1})
    with pytest.raises(TypeError):
        built.raw["a"] = 2  # type: ignore[index]
    assert "a@b.c" not in repr(claims)  # raw claims stay out of logs


# --- rejected tokens ------------------------------------------------------------------------


def test_wrong_secret_is_rejected() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET))
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(hs({"sub": "u"}, secret="another-secret-that-is-long-enough!!"))
    assert _reason(excinfo) == "invalid signature"


def test_tampered_payload_is_rejected() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET))
    header, _, signature = hs({"sub": "u", "rooms": {"publish": "chat:1"}}).split(".")
    forged_payload = _b64(json.dumps({"sub": "u", "rooms": {"publish": "*"}}).encode())
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(f"{header}.{forged_payload}.{signature}")
    assert _reason(excinfo) == "invalid signature"


@pytest.mark.parametrize("use_public_key", [False, True])
def test_alg_none_is_rejected(use_public_key: bool, rsa_key: rsa.RSAPrivateKey) -> None:
    config = AuthConfig(public_key=_public_pem(rsa_key)) if use_public_key else AuthConfig(secret=SECRET)
    token = _forge({"alg": "none", "typ": "JWT"}, {"sub": "admin", "rooms": {"publish": "*"}}, None)
    with pytest.raises(Unauthorized) as excinfo:
        Authenticator(config).verify(token)
    assert _reason(excinfo) == "algorithm not allowed"


def test_hs256_signed_with_public_key_pem_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: the public PEM text used as an HMAC secret must not verify."""
    public_pem = _public_pem(rsa_key)
    auth = Authenticator(AuthConfig(public_key=public_pem))
    token = _forge({"alg": "HS256", "typ": "JWT"}, {"sub": "admin"}, public_pem.encode())
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(token)
    assert _reason(excinfo) == "algorithm not allowed"


def test_es256_token_against_rsa_key_is_rejected(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = Authenticator(AuthConfig(public_key=_public_pem(rsa_key)))
    token = jwt.encode({"sub": "u"}, _private_pem(ec_key), algorithm="ES256")
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(token)
    assert _reason(excinfo) == "algorithm not allowed"


def test_rs256_signed_by_another_key_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = Authenticator(AuthConfig(public_key=_public_pem(rsa_key)))
    token = jwt.encode({"sub": "u"}, _private_pem(other), algorithm="RS256")
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(token)
    assert _reason(excinfo) == "invalid signature"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "a.b", "..."])
def test_malformed_token_is_rejected(token: str) -> None:
    with pytest.raises(Unauthorized) as excinfo:
        Authenticator(AuthConfig(secret=SECRET)).verify(token)
    assert _reason(excinfo) == "malformed token"


def test_expired_token_with_injected_clock() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET))
    token = hs({"sub": "u", "exp": NOW})
    assert auth.verify(token, now=NOW - 0.5).subject == "u"
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(token, now=NOW)
    assert _reason(excinfo) == "token expired"


def test_expired_within_leeway_is_accepted_and_beyond_is_not() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET, leeway=30))
    token = hs({"sub": "u", "exp": NOW})
    claims = auth.verify(token, now=NOW + 29)
    assert claims.expires_at == NOW
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(token, now=NOW + 30)
    assert _reason(excinfo) == "token expired"


def test_real_clock_is_used_without_now() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET))
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(hs({"exp": NOW}))  # 2023: long past on the real clock
    assert _reason(excinfo) == "token expired"


def test_not_before_is_enforced_with_injected_clock() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET, leeway=5))
    token = hs({"nbf": NOW})
    assert auth.verify(token, now=NOW - 5).subject is None
    with pytest.raises(Unauthorized) as excinfo:
        auth.verify(token, now=NOW - 6)
    assert _reason(excinfo) == "token not yet valid"


@pytest.mark.parametrize("exp", ["1700000000", True, None, [1]])
def test_non_numeric_exp_is_rejected(exp: Any) -> None:
    with pytest.raises(Unauthorized) as excinfo:
        Authenticator(AuthConfig(secret=SECRET)).verify(hs({"exp": exp}), now=NOW)
    assert _reason(excinfo) == "invalid exp"


def test_non_string_subject_is_rejected() -> None:
    with pytest.raises(Unauthorized) as excinfo:
        Authenticator(AuthConfig(secret=SECRET)).verify(hs({"sub": 17}))
    assert _reason(excinfo) == "invalid subject"


def test_audience_and_issuer() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET, audience="roomcast", issuer="https://idp"))
    good = {"aud": "roomcast", "iss": "https://idp", "sub": "u"}
    assert auth.verify(hs(good)).subject == "u"
    assert auth.verify(hs({**good, "aud": ["other", "roomcast"]})).subject == "u"
    cases = [
        ({**good, "aud": "other"}, "invalid audience"),
        ({k: v for k, v in good.items() if k != "aud"}, "invalid audience"),
        ({**good, "iss": "https://evil"}, "invalid issuer"),
        ({k: v for k, v in good.items() if k != "iss"}, "invalid issuer"),
    ]
    for payload, reason in cases:
        with pytest.raises(Unauthorized) as excinfo:
            auth.verify(hs(payload))
        assert _reason(excinfo) == reason, payload


def test_token_with_audience_rejected_when_none_configured() -> None:
    with pytest.raises(Unauthorized) as excinfo:
        Authenticator(AuthConfig(secret=SECRET)).verify(hs({"aud": "someone-else"}))
    assert _reason(excinfo) == "invalid audience"


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_rejected(token: str | None) -> None:
    with pytest.raises(Unauthorized) as excinfo:
        Authenticator(AuthConfig(secret=SECRET)).verify(token)
    assert _reason(excinfo) == "token required"


def test_rejections_never_echo_the_token(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = Authenticator(AuthConfig(secret=SECRET, audience="roomcast"))
    valid = hs({"sub": "u", "aud": "roomcast"})
    header, payload, signature = valid.split(".")
    tokens = [
        hs({"sub": "u", "aud": "roomcast"}, secret="wrong-secret-that-is-long-enough!!!"),
        hs({"sub": "u", "aud": "x"}),
        hs({"sub": "u", "aud": "roomcast", "exp": 1}),
        hs({"sub": "u", "aud": "roomcast", "rooms": 3}),
        f"{header}.{payload}X.{signature}",
        _forge({"alg": "HS256"}, {"sub": "u"}, _public_pem(rsa_key).encode()),
        "not-a-jwt-at-all-but-secret-looking",
    ]
    for token in tokens:
        with pytest.raises(Unauthorized) as excinfo:
            auth.verify(token)
        message = str(excinfo.value)
        assert token not in message
        assert all(part not in message for part in token.split(".") if len(part) > 3)
        assert SECRET not in message


# --- open configuration ---------------------------------------------------------------------


def test_an_open_config_needs_no_authenticator() -> None:
    """The server runs open without one: nothing to verify, no grants to check."""
    assert AuthConfig().open
    with pytest.raises(ValueError, match="needs no Authenticator"):
        Authenticator(AuthConfig())


# --- grants ---------------------------------------------------------------------------------


def test_glob_grants() -> None:
    auth = Authenticator(AuthConfig(secret=SECRET))
    claims = auth.verify(hs({"rooms": {"subscribe": ["chat:*", "task:42"], "publish": ["chat:lobby"]}}))
    assert claims.may_subscribe("chat:general")
    assert claims.may_subscribe("task:42")
    assert not claims.may_subscribe("task:421")
    assert not claims.may_subscribe("Chat:general")  # case-sensitive
    assert not claims.may_subscribe("admin")
    assert claims.may_publish("chat:lobby")
    assert not claims.may_publish("chat:general")


def test_string_instead_of_list_is_one_pattern() -> None:
    claims = Authenticator(AuthConfig(secret=SECRET)).verify(hs({"rooms": {"subscribe": "news:*"}}))
    assert claims.subscribe == ("news:*",)
    assert claims.publish == ()
    assert claims.may_subscribe("news:today")
    assert not claims.may_publish("news:today")


def test_missing_rooms_grants_nothing() -> None:
    claims = Authenticator(AuthConfig(secret=SECRET)).verify(hs({"sub": "u"}))
    assert claims.subscribe == () and claims.publish == ()
    assert not claims.may_subscribe("anything")


@pytest.mark.parametrize(
    "rooms",
    [
        ["chat:*"],
        "chat:*",
        None,
        {"subscribe": 5},
        {"subscribe": ["ok", 5]},
        {"publish": {"chat:*": True}},
        {"publish": None},
    ],
)
def test_malformed_grants_are_rejected(rooms: Any) -> None:
    with pytest.raises(Unauthorized) as excinfo:
        Authenticator(AuthConfig(secret=SECRET)).verify(hs({"rooms": rooms}))
    assert _reason(excinfo) == "invalid grants"


def test_require() -> None:
    claims = Claims(subject="u", expires_at=None, subscribe=("chat:*",), publish=(), raw={})
    require(claims, "subscribe", "chat:1")
    with pytest.raises(PermissionDenied) as excinfo:
        require(claims, "publish", "chat:1")
    assert str(excinfo.value) == "not allowed to publish 'chat:1'"
    with pytest.raises(PermissionDenied) as excinfo:
        require(claims, "subscribe", "admin")
    assert str(excinfo.value) == "not allowed to subscribe 'admin'"


# --- where the token comes from -------------------------------------------------------------


def test_token_from_each_source() -> None:
    assert token_from_request({}, {}, {"token": "A"}) == "A"
    assert token_from_request({"authorization": "Bearer B"}, {}) == "B"
    assert token_from_request({"authorization": "bEaReR   B2 "}, {}) == "B2"
    assert token_from_request({}, {"token": "C"}) == "C"


def test_token_from_request_precedence() -> None:
    headers = {"authorization": "Bearer B"}
    query = {"token": "C"}
    assert token_from_request(headers, query, {"token": "A"}) == "A"
    assert token_from_request(headers, query, None) == "B"
    assert token_from_request(headers, query, {"other": 1}) == "B"
    assert token_from_request({"authorization": "Basic dXNlcjpwdw=="}, query) == "C"
    assert token_from_request({}, query, {"token": ""}) == "C"


def test_token_from_request_absent() -> None:
    assert token_from_request({}, {}) is None
    assert token_from_request({"authorization": "Bearer "}, {"token": ""}, {"token": 5}) is None
    assert token_from_request({}, {}, "not-a-mapping") is None


# --- configuration --------------------------------------------------------------------------


def test_default_algorithms(rsa_key: rsa.RSAPrivateKey) -> None:
    assert AuthConfig(secret=SECRET).algorithms == ("HS256",)
    assert AuthConfig(public_key=_public_pem(rsa_key)).algorithms == ("RS256", "ES256")
    assert AuthConfig().algorithms == () and AuthConfig().open
    assert not AuthConfig(secret=SECRET).open
    assert SECRET not in repr(AuthConfig(secret=SECRET))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": SECRET, "algorithms": ("none",)},
        {"secret": SECRET, "algorithms": ("RS256",)},
        {"public_key": "PEM", "algorithms": ("HS256",)},
        {"public_key": "PEM", "algorithms": ("none",)},
        {"secret": SECRET, "public_key": "PEM"},
        {"secret": ""},
        {"secret": SECRET, "leeway": -1},
        {"algorithms": ("HS256",)},
        {"audience": "roomcast"},
        {"issuer": "https://idp"},
    ],
)
def test_unsafe_configs_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AuthConfig(**kwargs)


def test_bad_public_key_fails_at_startup(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        Authenticator(AuthConfig(public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"))
    with pytest.raises(ValueError, match="fits the key"):
        Authenticator(AuthConfig(public_key=_public_pem(rsa_key), algorithms=("ES256",)))


def test_from_values(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert AuthConfig.from_values(secret="", public_key_file="", audience="").open
    pem_file = tmp_path / "key.pem"
    pem_file.write_text(_public_pem(ec_key))
    config = AuthConfig.from_values(public_key_file=pem_file, algorithms="ES256, RS256", leeway=2)
    assert config.public_key == _public_pem(ec_key)
    assert config.algorithms == ("ES256", "RS256")
    assert config.leeway == 2
    token = jwt.encode({"sub": "u"}, _private_pem(ec_key), algorithm="ES256")
    assert Authenticator(config).verify(token).subject == "u"
