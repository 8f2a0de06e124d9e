"""TokenVerifier against hand-forged and properly signed tokens, every key source."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.policy import Principal
from gateway.auth.verifier import TokenVerifier, create_verifier
from gateway.config import AuthSettings, ConfigError, Settings
from gateway.errors import Unauthenticated
from tests.auth.conftest import JwksServer
from tests.jwt_support import DROP, FromNow, auth_settings, claims, forge, public_jwk
from tests.support import HS_SECRET

SECRET = HS_SECRET.encode()


def pem(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def hs256(payload: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256", headers=headers)


@pytest.fixture
def hs_verifier(session: aiohttp.ClientSession) -> TokenVerifier:
    return create_verifier(auth_settings(), session)


@pytest.fixture
def rsa_settings(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> AuthSettings:
    path = tmp_path / "issuer.pem"
    path.write_bytes(pem(rsa_key.public_key()))
    return auth_settings(algorithms=["RS256"], hs256_secret=None, public_key_file=str(path))


async def refused(verifier: TokenVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    assert info.value.status == 401
    if token:
        assert token not in info.value.message
    return info.value


async def test_good_hs256_token_gives_the_principal(
    make_settings: Callable[..., Settings], session: aiohttp.ClientSession
) -> None:
    verifier = create_verifier(make_settings().auth, session)
    token = hs256(claims(projects="*", roles=["console-admin"]))
    assert await verifier.verify(token) == Principal(
        subject="alice",
        projects=frozenset(),
        all_projects=True,
        roles=frozenset({"console-admin"}),
        is_admin=True,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"iss": "https://evil.example.com"}, "issuer"),
        ({"aud": "another-service"}, "not meant"),
        ({"aud": ["another-service", "third"]}, "not meant"),
        ({"exp": FromNow(-45)}, "expired"),
        ({"nbf": FromNow(45)}, "not yet valid"),
        ({"iat": FromNow(45)}, "not yet valid"),
        ({"exp": DROP}, "required claim"),
        ({"sub": DROP}, "required claim"),
        ({"iss": DROP}, "required claim"),
        ({"aud": DROP}, "required claim"),
        ({"exp": "tomorrow"}, "invalid"),
        ({"sub": ""}, "subject"),
        ({"sub": 7}, "invalid"),
        ({"projects": "p1"}, "projects"),
        ({"roles": {"admin": True}}, "roles"),
    ],
)
async def test_bad_claims_are_refused(
    hs_verifier: TokenVerifier, overrides: dict[str, Any], message: str
) -> None:
    error = await refused(hs_verifier, hs256(claims(**overrides)))
    assert message in error.message


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": FromNow(-15)},
        {"nbf": FromNow(15)},
        {"iat": FromNow(15)},
        {"aud": ["another-service", "console-gateway"]},
    ],
)
async def test_within_leeway_is_accepted(
    hs_verifier: TokenVerifier, overrides: dict[str, Any]
) -> None:
    principal = await hs_verifier.verify(hs256(claims(**overrides)))
    assert principal.subject == "alice"


async def test_leeway_comes_from_settings(session: aiohttp.ClientSession) -> None:
    token = hs256(claims(exp=FromNow(-15)))
    await refused(create_verifier(auth_settings(leeway_s=0), session), token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "noNe"])
@pytest.mark.parametrize("signature", [b"", b"anything"])
async def test_alg_none_is_refused(hs_verifier: TokenVerifier, alg: str, signature: bytes) -> None:
    token = forge({"alg": alg, "typ": "JWT"}, claims(), signature=signature)
    if signature:
        assert "algorithm" in (await refused(hs_verifier, token)).message
    else:
        await refused(hs_verifier, token)


@pytest.mark.parametrize(
    "header",
    [
        {"typ": "JWT"},
        {"alg": None},
        {"alg": ["HS256"]},
        {"alg": "HS512"},
        {"alg": "RS256"},
        {"alg": "hs256"},
    ],
)
async def test_algorithms_outside_the_allow_list_are_refused(
    hs_verifier: TokenVerifier, header: dict[str, Any]
) -> None:
    token = forge(header, claims(), hmac_key=SECRET)
    assert "algorithm" in (await refused(hs_verifier, token)).message


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    session: aiohttp.ClientSession, rsa_settings: AuthSettings, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = create_verifier(rsa_settings, session)
    for public_pem in (pem(rsa_key.public_key()), pem(rsa_key.public_key()).strip()):
        token = forge({"alg": "HS256", "typ": "JWT"}, claims(), hmac_key=public_pem)
        await refused(verifier, token)


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"]},
        {"crit": ["b64"]},
        {"crit": []},
        {"crit": "b64"},
        {"crit": ["x-custom"], "x-custom": 1},
    ],
)
async def test_crit_header_is_refused(hs_verifier: TokenVerifier, extra: dict[str, Any]) -> None:
    await refused(hs_verifier, hs256(claims(), headers=extra))


async def test_crit_is_refused_even_where_pyjwt_would_accept_it(
    hs_verifier: TokenVerifier,
) -> None:
    header = {"alg": "HS256", "typ": "JWT", "crit": ["b64"], "b64": True}
    token = forge(header, claims(), hmac_key=SECRET)
    assert "critical" in (await refused(hs_verifier, token)).message


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "..",
        "a..c",
        "not a token",
        "é.é.é",
        "eyJ.eyJ.sig=",
        "a.b.c\n",
        " a.b.c",
    ],
)
async def test_garbage_is_refused(hs_verifier: TokenVerifier, token: str) -> None:
    await refused(hs_verifier, token)


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (b"not json", claims()),
        (b"[1, 2]", claims()),
        (b'"HS256"', claims()),
        (b"\xff\xfe", claims()),
        ({"alg": "HS256"}, b"not json"),
        ({"alg": "HS256"}, b"[1, 2]"),
        ({"alg": "HS256"}, b"\xff\xfe"),
        ({"alg": "HS256", "kid": 5}, claims()),
    ],
)
async def test_non_json_segments_are_refused(
    hs_verifier: TokenVerifier, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes
) -> None:
    # Correctly signed, so only the parsing can fail.
    await refused(hs_verifier, forge(header, payload, hmac_key=SECRET))


async def test_wrong_hs256_secret_is_refused(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), b"x" * 40, algorithm="HS256")
    await refused(hs_verifier, token)


async def test_oversized_token_is_refused_before_parsing(hs_verifier: TokenVerifier) -> None:
    fits = hs256(claims(pad="x" * 4000))
    assert (await hs_verifier.verify(fits)).subject == "alice"
    too_big = hs256(claims(pad="x" * 9000))
    assert "too large" in (await refused(hs_verifier, too_big)).message


@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_key_url_headers_are_never_fetched(
    hs_verifier: TokenVerifier, jwks_server: JwksServer, header: str
) -> None:
    token = hs256(claims(), headers={header: jwks_server.url, "jwk": {"kty": "oct", "k": "AA"}})
    assert (await hs_verifier.verify(token)).subject == "alice"
    assert jwks_server.gets == 0


async def test_attacker_jku_and_embedded_jwk_do_not_replace_the_jwks(
    session: aiohttp.ClientSession,
    jwks_server: JwksServer,
    ec_key: ec.EllipticCurvePrivateKey,
    other_ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "good", "ES256")]}
    settings = auth_settings(algorithms=["ES256"], hs256_secret=None, jwks_url=jwks_server.url)
    verifier = create_verifier(settings, session)
    evil_jwk = public_jwk(other_ec_key, "evil", "ES256")
    headers = {
        "kid": "evil",
        "jku": f"{jwks_server.base()}/evil/jwks.json",
        "x5u": f"{jwks_server.base()}/evil/cert.pem",
        "jwk": evil_jwk,
    }
    token = jwt.encode(claims(), other_ec_key, algorithm="ES256", headers=headers)
    await refused(verifier, token)
    assert jwks_server.other_gets == 0
    assert jwks_server.gets == 1  # only the configured URL


async def test_good_rs256_token_via_public_key_file(
    session: aiohttp.ClientSession, rsa_settings: AuthSettings, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = create_verifier(rsa_settings, session)
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await verifier.verify(token)).projects == frozenset({"p1"})


async def test_rs256_token_from_another_key_is_refused(
    session: aiohttp.ClientSession,
    rsa_settings: AuthSettings,
    other_rsa_key: rsa.RSAPrivateKey,
) -> None:
    verifier = create_verifier(rsa_settings, session)
    await refused(verifier, jwt.encode(claims(), other_rsa_key, algorithm="RS256"))


async def test_good_eddsa_token_via_public_key_file(
    session: aiohttp.ClientSession, tmp_path: Path, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    path = tmp_path / "ed.pem"
    path.write_bytes(pem(ed_key.public_key()))
    settings = auth_settings(algorithms=["EdDSA"], hs256_secret=None, public_key_file=str(path))
    token = jwt.encode(claims(), ed_key, algorithm="EdDSA")
    assert (await create_verifier(settings, session).verify(token)).subject == "alice"


async def test_good_es256_token_via_jwks(
    session: aiohttp.ClientSession, jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1", "ES256")]}
    settings = auth_settings(algorithms=["ES256"], hs256_secret=None, jwks_url=jwks_server.url)
    verifier = create_verifier(settings, session)
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k1"})
    assert (await verifier.verify(token)).subject == "alice"
    unknown = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k2"})
    assert "unknown" in (await refused(verifier, unknown)).message


def write_pem(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "key.pem"
    path.write_bytes(data)
    return str(path)


async def test_unusable_key_files_fail_at_construction(
    session: aiohttp.ClientSession,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    small = rsa.generate_private_key(65537, 1024)  # noqa: S505 - weak on purpose
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cases = [
        (["RS256"], str(tmp_path / "missing.pem")),
        (["RS256"], write_pem(tmp_path, b"not a pem")),
        (["RS256"], write_pem(tmp_path, private_pem)),
        (["RS256"], write_pem(tmp_path, pem(ec_key.public_key()))),
        (["ES384"], write_pem(tmp_path, pem(ec_key.public_key()))),
        (["RS256"], write_pem(tmp_path, pem(small.public_key()))),
    ]
    for algorithms, path in cases:
        settings = auth_settings(algorithms=algorithms, hs256_secret=None, public_key_file=path)
        with pytest.raises(ConfigError, match=r"auth\.public_key_file"):
            create_verifier(settings, session)


async def test_secret_too_short_for_hs512_fails_at_construction(
    session: aiohttp.ClientSession,
) -> None:
    settings = auth_settings(algorithms=["HS512"], hs256_secret="s" * 40)
    with pytest.raises(ConfigError, match=r"auth\.hs256_secret"):
        create_verifier(settings, session)
