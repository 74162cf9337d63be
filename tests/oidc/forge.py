"""Attacker-made tokens: what someone without the realm's private key can produce.

Each starts from the claims of a genuine token (so only the forged part is wrong).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.request
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def header_of(token: str) -> dict[str, Any]:
    header = token.split(".", maxsplit=1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))))


def _encode(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"


def alg_none(genuine: str) -> str:
    """The genuine claims, ``alg: none`` and an empty signature."""
    return _encode({"alg": "none", "typ": "JWT", "kid": header_of(genuine)["kid"]}, claims_of(genuine)) + "."


def realm_public_key_pem(issuer: str) -> bytes:
    """The realm's public key as published at ``/realms/<realm>`` (Keycloak's ``public_key``)."""
    with urllib.request.urlopen(issuer, timeout=10) as response:
        spki = base64.b64decode(json.loads(response.read())["public_key"])
    key = serialization.load_der_public_key(spki)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def hs256_with_public_key(genuine: str, issuer: str) -> str:
    """Key confusion: HS256 'signed' with the realm's public key (PEM) as the HMAC secret."""
    signing_input = _encode(
        {"alg": "HS256", "typ": "JWT", "kid": header_of(genuine)["kid"]}, claims_of(genuine)
    )
    mac = hmac.new(realm_public_key_pem(issuer), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def own_key(genuine: str, kid: str) -> str:
    """Signed RS256 with the attacker's own key under a kid the realm never published."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_input = _encode({"alg": "RS256", "typ": "JWT", "kid": kid}, claims_of(genuine))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def tampered(genuine: str, **changes: Any) -> str:
    """The genuine header and signature over changed claims (e.g. extra roles)."""
    header, _, signature = genuine.split(".")
    claims = claims_of(genuine) | changes
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
