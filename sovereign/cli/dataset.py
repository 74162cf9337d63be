"""``sovereign dataset encrypt|decrypt``: the data owner's and the custodian's side of sealed streams.

Encrypt seals with the data owner's own OpenBao identity (AppRole ``sovereign-data-owner``): OpenBao makes
a new data key, its wrapped form becomes the key's next version (a ``key.rotate`` entry) and the stream's
header names ``NAME@vVERSION``; the control plane's role is never used to seal, so every KEK decrypt in
OpenBao's log stays a recorded release. Without the owner identity encrypt refuses before any OpenBao call
(nothing reached a server, nothing to record); an owner call OpenBao refuses is an ``operator.refused``
entry. Decrypt reads the name back from the header, so a file always opens with the version that sealed
it. It is the custodian's recovery with the control plane's AppRole, so it is on the record like a
release: after OpenBao's decrypt and before any plaintext is written, a ``dataset.recover`` entry (actor
``local:<OS user>``, key and version, OpenBao's request id, the header's SHA-256) is committed; if it
cannot be, nothing is written; a decrypt OpenBao refuses is an ``operator.refused`` entry. ``audit
reconcile`` matches these decrypts by their request id. Output appears under its final name only when
complete (temp file, fsync, rename).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

from kms.audit.entry import Kind, Reason
from kms.domain.catalogue import Catalogue, DataKey, KeyKind, require_kind, require_usable, validate_name
from kms.envelope import read_header
from kms.envelope.errors import EnvelopeError
from kms.envelope.files import decrypt_file, encrypt_file
from kms.envelope.names import format_key_ref, parse_key_ref
from kms.errors import Code, KmsError, OpenBaoError
from kms.openbao.vault import BaoSettings, OpenBaoTransit
from kms.sql.store import Store
from sovereign.cli._local_ledger import key_fields, record_local
from sovereign.cli._output import fail, print_ok
from sovereign.cli.key import open_local
from sovereign.cli.kms import host_bao_addr, host_bao_ca_cert

OWNER_ROLE_ID_ENV = "SOVEREIGN_BAO_OWNER_ROLE_ID"
OWNER_SECRET_ID_FILE_ENV = "SOVEREIGN_BAO_OWNER_SECRET_ID_FILE"  # noqa: S105 (a variable name)
MAX_COMMENT = 1024
OWNER_HINT = (
    f"pass --owner-role-id and --owner-secret-id-file (or {OWNER_ROLE_ID_ENV} and {OWNER_SECRET_ID_FILE_ENV}): "
    "the files owner-role-id and owner-secret-id that 'sovereign kms bootstrap --out DIR' writes"
)


def _encrypt(args: argparse.Namespace) -> int:
    try:
        _check_inputs(args)  # every refusal that needs no key comes before OpenBao is called
        owner = _owner_settings(args)
        if owner is None:
            raise KmsError(
                "sealing needs the data owner's own OpenBao identity",
                code=Code.KMS_CONFIG_INVALID,
                hint=OWNER_HINT,
            )
        key = _owner_key(args, owner)
        info = encrypt_file(
            key.plaintext, args.input, args.output, key_ref=format_key_ref(key.name, key.version)
        )
    except (KmsError, EnvelopeError) as err:
        return fail(err, as_json=args.json)
    except OSError as exc:
        return fail(_file_error(exc), as_json=args.json)
    return _report(args, "sealed", key.name, key.version, info.plaintext_bytes)


def _decrypt(args: argparse.Namespace) -> int:
    try:
        _check_inputs(args)
        with args.input.open("rb") as src:
            header = read_header(src)
        ref = parse_key_ref(header.key_ref)
        if ref is None or ref[0] != args.key:
            raise KmsError(
                f"{args.input} was sealed with key {header.key_ref.decode('ascii', 'replace')!r}, not {args.key!r}",
                code=Code.KEY_NOT_FOUND,
                hint="pass the key named in the file's header with --key",
            )
        catalogue, store = open_local(args, bao=True)
        key = _custodian_key(catalogue, store, ref[0], ref[1])
        _record_recovery(args, store, key, header.raw)  # before any plaintext is written; refusal: none is
        info = decrypt_file(key.plaintext, args.input, args.output)
    except (KmsError, EnvelopeError) as err:
        return fail(err, as_json=args.json)
    except OSError as exc:
        return fail(_file_error(exc), as_json=args.json)
    return _report(args, "opened", key.name, key.version, info.plaintext_bytes)


def _custodian_key(catalogue: Catalogue, store: Store, name: str, version: int) -> DataKey:
    """Unwrap with the control plane's role; a decrypt OpenBao refuses is an ``operator.refused`` entry
    (as a refused owner seal is), a refusal before OpenBao (unknown, disabled, wrong kind) is not."""
    try:
        return catalogue.unwrap(name, version, kind=KeyKind.DATASET)
    except OpenBaoError as err:
        if err.code is not Code.KMS_UNAVAILABLE:
            reason = Reason(str(err.code), err.message)
            fields = {
                "key_name": name,
                "key_version": version,
                "comment": "custodian recovery refused by OpenBao",
            }
            record_local(store, Kind.OPERATOR_REFUSED, fields, [reason])
        raise


def _record_recovery(args: argparse.Namespace, store: Store, key: DataKey, header: bytes) -> None:
    """The custodian's KEK decrypt on the record (``dataset.recover``, a batch of one with OpenBao's
    request id, so ``audit reconcile`` matches it), durable before the file is opened."""
    if not key.request_id:
        raise KmsError(
            "OpenBao answered the decrypt without a request id, so it cannot be matched in the ledger",
            code=Code.KMS_BAD_RESPONSE,
            hint="check that the address is an OpenBao server; nothing was written",
        )
    fields = {
        **_recovered_key_fields(key),
        "bao_request_id": key.request_id,
        "bao_batch_index": 0,
        "bao_batch_size": 1,
        "header_sha256": hashlib.sha256(header).hexdigest(),
        "comment": f"recovered by the custodian: {args.input} -> {args.output}"[:MAX_COMMENT],
    }
    try:
        record_local(store, Kind.DATASET_RECOVER, fields)
    except KmsError as err:
        raise KmsError(
            f"the recovery could not be recorded in the audit ledger, so nothing was written: {err.message}",
            code=err.code,
            hint="make the control plane's database writable (or free its disk) and run decrypt again",
        ) from None


def _recovered_key_fields(key: DataKey) -> dict[str, object]:
    return {"key_name": key.name, "key_kind": key.kind.value, "key_version": key.version}


def _owner_settings(args: argparse.Namespace) -> BaoSettings | None:
    role_id = args.owner_role_id or os.environ.get(OWNER_ROLE_ID_ENV)
    secret = args.owner_secret_id_file or os.environ.get(OWNER_SECRET_ID_FILE_ENV)
    if not role_id and not secret:
        return None
    if not (role_id and secret):
        raise KmsError(
            "the data owner identity needs both a role id and a secret id file",
            code=Code.KMS_CONFIG_INVALID,
            hint=OWNER_HINT,
        )
    return BaoSettings.resolve(
        addr=args.addr or host_bao_addr(),
        role_id=role_id,
        secret_id_file=Path(secret),
        ca_cert=args.ca_cert or host_bao_ca_cert(),  # like the address: found the way key commands find it
    )


def _owner_key(args: argparse.Namespace, owner: BaoSettings) -> DataKey:
    """Seal under a key version the owner made itself (no decrypt by anyone), added to the catalogue
    and recorded in the ledger as a ``key.rotate`` by the local operator."""
    catalogue, store = open_local(args, bao=False)
    record = catalogue.describe(args.key)  # unknown, unusable or wrong-kind keys: refused before OpenBao
    require_usable(record)
    require_kind(record, KeyKind.DATASET)
    transit = OpenBaoTransit(owner)
    try:
        plaintext, wrapped = transit.generate_plaintext_data_key()
    except KmsError as err:
        if err.code is not Code.KMS_UNAVAILABLE:  # it reached OpenBao and was refused: on the record
            reason = Reason(str(err.code), err.message)
            fields = {"key_name": args.key, "comment": "data owner seal refused by OpenBao"}
            record_local(store, Kind.OPERATOR_REFUSED, fields, [reason])
        raise
    finally:
        transit.close()
    record = catalogue.add_wrapped_version(args.key, wrapped, kind=KeyKind.DATASET)
    record_local(store, Kind.KEY_ROTATE, {**key_fields(record), "comment": "sealed by the data owner"})
    return DataKey(record.name, record.kind, record.current_version, plaintext, "")


def _check_inputs(args: argparse.Namespace) -> None:
    validate_name(args.key)
    folder = args.output.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise KmsError(
            f"cannot write {args.output}: {folder} is not a writable folder",
            code=Code.STORAGE_ERROR,
            hint="OUT's folder must exist and be writable",
        )
    if args.output.exists() and args.output.resolve() == args.input.resolve():
        raise KmsError(
            f"OUT {args.output} is IN",
            code=Code.REQUEST_INVALID,
            hint="write OUT to another file",
        )
    if not os.access(args.input, os.R_OK):
        raise KmsError(f"cannot read {args.input}", code=Code.STORAGE_ERROR, hint="check that IN is readable")


def _file_error(exc: OSError) -> KmsError:
    return KmsError(
        f"{exc.filename}: {exc.strerror}",
        code=Code.STORAGE_ERROR,
        hint="check that IN is readable and that OUT's folder exists and is writable",
    )


def _report(args: argparse.Namespace, verb: str, name: str, version: int, size: int) -> int:
    if args.json:
        print_ok(key=name, version=version, bytes=size, output=str(args.output))
    else:
        print(f"{verb} {args.input} -> {args.output} ({size} bytes) with {name} v{version}")
    return 0
