"""OpenBao transit: the ``kms.domain.transit.Transit`` port over an ``OpenBaoSession``.

Data keys are generated wrapped by the KEK (``transit/datakey/wrapped``) and only ever leave OpenBao in
plaintext through ``unwrap``, whose result hides the bytes from ``repr``. Signing keys (audit,
provenance) are Ed25519; their signatures are returned as raw bytes with the version checked.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from typing import Any

import hvac
import hvac.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.domain.transit import (
    PROVENANCE_KEY_NAME,
    KeyInfo,
    PublicKey,
    Signature,
    SigningKeys,
    Unwrapped,
    WrappedKey,
)
from kms.errors import Code, OpenBaoError
from kms.openbao.failures import _b64, _bad_response, _data, _version_of
from kms.openbao.session import OpenBaoSession
from kms.openbao.settings import BaoSettings

DATA_KEY_BITS = 256


class OpenBaoTransit(OpenBaoSession):
    """``Transit`` over a real OpenBao."""

    def __init__(
        self,
        settings: BaoSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        super().__init__(settings, monotonic=monotonic, observe=observe)
        self.kek = settings.kek
        self.audit_key = settings.audit_key
        self._mount = settings.mount
        self._public_keys: dict[int, PublicKey] = {}

    def __repr__(self) -> str:
        return f"OpenBaoTransit(addr={self.settings.addr!r}, kek={self.kek!r}, auth={type(self.settings.auth).__name__})"

    def generate_wrapped_data_key(self, kek: str | None = None) -> WrappedKey:
        name = kek or self.kek
        resp = self.call(
            "datakey",
            lambda c: c.secrets.transit.generate_data_key(
                name, key_type="wrapped", bits=DATA_KEY_BITS, mount_point=self._mount
            ),
        )
        ciphertext = _data(resp, "datakey").get("ciphertext")
        if not isinstance(ciphertext, str):
            raise _bad_response("datakey", "ciphertext")
        return WrappedKey(ciphertext, _version_of(ciphertext, "datakey"))

    def generate_plaintext_data_key(self, kek: str | None = None) -> tuple[bytes, WrappedKey]:
        """A fresh data key, plaintext and wrapped (``transit/datakey/plaintext``): how a data owner, whose
        role may not decrypt (``kms.openbao.data_owner``), seals under a key of its own making."""
        name = kek or self.kek
        resp = self.call(
            "datakey",
            lambda c: c.secrets.transit.generate_data_key(
                name, key_type="plaintext", bits=DATA_KEY_BITS, mount_point=self._mount
            ),
        )
        data = _data(resp, "datakey")
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str):
            raise _bad_response("datakey", "ciphertext")
        return _b64(data.get("plaintext"), "datakey"), WrappedKey(
            ciphertext, _version_of(ciphertext, "datakey")
        )

    def unwrap(self, ciphertext: str, kek: str | None = None) -> Unwrapped:
        name = kek or self.kek
        resp = self.call(
            "decrypt",
            lambda c: c.secrets.transit.decrypt_data(name, ciphertext=ciphertext, mount_point=self._mount),
        )
        return Unwrapped(
            _b64(_data(resp, "decrypt").get("plaintext"), "decrypt"), str(resp.get("request_id", ""))
        )

    def unwrap_batch(
        self, ciphertexts: Sequence[str], kek: str | None = None
    ) -> list[Unwrapped | OpenBaoError]:
        """One request for many ciphertexts; a bad item yields an error in its slot, not a failed batch."""
        if not ciphertexts:
            return []
        name = kek or self.kek
        items = [{"ciphertext": c} for c in ciphertexts]

        def call(c: hvac.Client) -> dict[str, Any]:
            try:
                result: dict[str, Any] = c.secrets.transit.decrypt_data(
                    name, batch_input=items, mount_point=self._mount
                )
                return result
            except hvac.exceptions.InvalidRequest as exc:
                # every item failed: OpenBao answers 400 but still lists per-item errors
                if isinstance(exc.json, dict) and isinstance(exc.json.get("data"), dict):
                    return exc.json
                raise

        resp = self.call("decrypt", call)
        results = _data(resp, "decrypt").get("batch_results")
        if not isinstance(results, list) or len(results) != len(ciphertexts):
            raise _bad_response("decrypt", "batch_results list")
        request_id = str(resp.get("request_id", ""))
        out: list[Unwrapped | OpenBaoError] = []
        for index, item in enumerate(results):
            if isinstance(item, dict) and item.get("error"):
                out.append(
                    OpenBaoError(
                        f"OpenBao could not decrypt batch item {index}: {str(item['error'])[:200]}",
                        code=Code.KMS_DECRYPT_FAILED,
                    )
                )
            elif isinstance(item, dict) and "plaintext" in item:
                out.append(Unwrapped(_b64(item["plaintext"], "decrypt"), request_id))
            else:
                raise _bad_response("decrypt", "batch result")
        return out

    def rewrap(self, ciphertext: str, kek: str | None = None) -> WrappedKey:
        name = kek or self.kek
        resp = self.call(
            "rewrap",
            lambda c: c.secrets.transit.rewrap_data(name, ciphertext=ciphertext, mount_point=self._mount),
        )
        new = _data(resp, "rewrap").get("ciphertext")
        if not isinstance(new, str):
            raise _bad_response("rewrap", "ciphertext")
        return WrappedKey(new, _version_of(new, "rewrap"))

    def rotate_kek(self) -> int:
        """Rotate the KEK (operator credentials); returns its new latest version."""
        self.call(
            "rotate",
            lambda c: c.secrets.transit.rotate_key(self.kek, mount_point=self._mount),
            idempotent=False,  # a repeat after a lost answer would rotate twice
        )
        return self.key_info(self.kek).latest_version

    # -- audit signing key

    def sign(self, data: bytes) -> Signature:
        resp = self.call(
            "sign",
            lambda c: c.secrets.transit.sign_data(
                self.audit_key, hash_input=base64.b64encode(data).decode(), mount_point=self._mount
            ),
        )
        value = _data(resp, "sign").get("signature")
        if not isinstance(value, str):
            raise _bad_response("sign", "signature")
        version = _version_of(value, "sign")
        return Signature(
            value, version, _b64(value.split(":", 2)[2], "sign"), str(resp.get("request_id", ""))
        )

    def verify(self, data: bytes, signature: Signature) -> None:
        """Verify locally with the audit key's public key (the same check an offline verifier does)."""
        public = self.public_key(signature.key_version)
        try:
            Ed25519PublicKey.from_public_bytes(public.raw).verify(signature.raw, data)
        except InvalidSignature:
            raise OpenBaoError(
                f"signature by {self.audit_key} v{signature.key_version} does not verify",
                code=Code.KMS_SIGNATURE_INVALID,
                hint="the data or the signature was altered",
            ) from None

    def public_key(self, version: int | None = None) -> PublicKey:
        if version is not None and version in self._public_keys:
            return self._public_keys[version]
        resp = self.call(
            "read audit key", lambda c: c.secrets.transit.read_key(self.audit_key, mount_point=self._mount)
        )
        data = _data(resp, "read audit key")
        keys = data.get("keys")
        if not isinstance(keys, dict):
            raise _bad_response("read audit key", "keys map")
        for ver, entry in keys.items():
            if isinstance(entry, dict) and entry.get("public_key"):
                raw = _b64(entry["public_key"], "read audit key")
                self._public_keys[int(ver)] = PublicKey(int(ver), raw)
        wanted = version if version is not None else int(data.get("latest_version") or 0)
        if wanted not in self._public_keys:
            raise OpenBaoError(
                f"{self.audit_key} has no public key version {wanted}", code=Code.KMS_SIGNATURE_INVALID
            )
        return self._public_keys[wanted]

    def key_info(self, name: str | None = None) -> KeyInfo:
        key = name or self.kek
        data = _data(
            self.call("read key", lambda c: c.secrets.transit.read_key(key, mount_point=self._mount)),
            "read key",
        )
        try:
            return KeyInfo(
                name=key,
                type=str(data["type"]),
                latest_version=int(data["latest_version"]),
                min_decryption_version=int(data["min_decryption_version"]),
                exportable=bool(data["exportable"]),
                deletion_allowed=bool(data["deletion_allowed"]),
            )
        except (KeyError, TypeError, ValueError):
            raise _bad_response("read key", "key description") from None

    # -- signing keys by name (provenance statements)

    def signing_keys(self, name: str) -> SigningKeys:
        """The public halves of the Ed25519 transit key ``name``: latest version, every version's key."""
        operation = f"read key {name}"
        data = _data(
            self.call(operation, lambda c: c.secrets.transit.read_key(name, mount_point=self._mount)),
            operation,
        )
        keys = data.get("keys")
        if data.get("type") != "ed25519" or not isinstance(keys, dict):
            raise OpenBaoError(
                f"the transit key {name} is not an ed25519 key",
                code=Code.KMS_CONFIG_INVALID,
                hint="sovereign kms bootstrap creates it as ed25519; a key of another type must be replaced",
            )
        public: dict[int, bytes] = {}
        try:
            for version, entry in keys.items():
                if isinstance(entry, dict) and entry.get("public_key"):
                    public[int(version)] = _b64(entry["public_key"], operation)
            latest = int(data.get("latest_version") or 0)
        except (TypeError, ValueError):
            raise _bad_response(operation, "keys map") from None
        if latest not in public or any(len(raw) != 32 for raw in public.values()):
            raise _bad_response(operation, "Ed25519 public key for every version")
        return SigningKeys(name, latest, public)

    def sign_batch(self, name: str, version: int, messages: Sequence[bytes]) -> list[bytes | OpenBaoError]:
        """Sign every message with ``name`` at ``version`` in one request (``batch_input``); raw Ed25519
        signatures, each checked to be of that version. A refused item is an error in its slot."""
        if not messages:
            return []
        items = [{"input": base64.b64encode(m).decode()} for m in messages]

        def call(c: hvac.Client) -> dict[str, Any]:
            try:
                result: dict[str, Any] = c.secrets.transit.sign_data(
                    name, key_version=version, batch_input=items, mount_point=self._mount
                )
                return result
            except hvac.exceptions.InvalidRequest as exc:
                # every item failed: OpenBao answers 400 but still lists per-item errors
                if isinstance(exc.json, dict) and isinstance(exc.json.get("data"), dict):
                    return exc.json
                raise

        results = _data(self.call("sign batch", call), "sign batch").get("batch_results")
        if not isinstance(results, list) or len(results) != len(messages):
            raise _bad_response("sign batch", "batch_results list")
        out: list[bytes | OpenBaoError] = []
        for index, item in enumerate(results):
            if isinstance(item, dict) and item.get("error"):
                out.append(
                    OpenBaoError(
                        f"OpenBao could not sign batch item {index} with {name}: {str(item['error'])[:200]}"
                    )
                )
                continue
            value = item.get("signature") if isinstance(item, dict) else None
            if not isinstance(value, str):
                raise _bad_response("sign batch", "signature")
            signed = _version_of(value, "sign batch")
            if signed != version:
                out.append(
                    OpenBaoError(
                        f"OpenBao signed with {name} v{signed}, v{version} was asked for",
                        code=Code.KMS_BAD_RESPONSE,
                    )
                )
                continue
            out.append(_b64(value.split(":", 2)[2], "sign batch"))
        return out

    # -- setup (operator credentials)

    def ensure_keys(self) -> dict[str, bool]:
        """Create the KEK and the audit key if absent; returns {name: created}. Never weakens a key."""
        return {
            self.kek: self._ensure_key(self.kek, "aes256-gcm96"),
            self.audit_key: self._ensure_key(self.audit_key, "ed25519"),
            PROVENANCE_KEY_NAME: self._ensure_key(PROVENANCE_KEY_NAME, "ed25519"),
        }

    def _ensure_key(self, name: str, key_type: str) -> bool:
        transit = self._client.secrets.transit
        created = False
        try:
            info = self.key_info(name)
        except OpenBaoError as err:
            if err.code != Code.KMS_NOT_BOOTSTRAPPED:
                raise
            self.call(
                "create key",
                lambda _c: transit.create_key(
                    name,
                    key_type=key_type,
                    exportable=False,
                    allow_plaintext_backup=False,
                    mount_point=self._mount,
                ),
            )
            info, created = self.key_info(name), True
        if info.type != key_type:
            raise OpenBaoError(
                f"transit key {name} exists with type {info.type}, expected {key_type}",
                code=Code.KMS_CONFIG_INVALID,
                hint="this OpenBao already holds a different key by that name; use a fresh mount",
            )
        if info.exportable:
            raise OpenBaoError(
                f"transit key {name} is exportable; refusing to use it",
                code=Code.KMS_CONFIG_INVALID,
                hint="exportability cannot be revoked in OpenBao; create a new key on a fresh mount",
            )
        if info.deletion_allowed:
            self.call(
                "configure key",
                lambda _c: transit.update_key_configuration(
                    name, deletion_allowed=False, mount_point=self._mount
                ),
            )
        return created
