"""What a set of ledger entries says about one output: the one derivation the issuer and the verifier share.

The issuer includes the entries (with proofs) and writes this summary into the predicate; the verifier
derives it again from the proven entries and refuses a predicate that says anything else. Inputs:

- the output's ``model.output`` entry (decision grant);
- the node's ``registration`` entries (register and renew) with verified evidence up to the output: the
  latest names the hardware (TEE, measurement, TCB status, claims digest, and each verified GPU: its
  architecture, UEID, driver and VBIOS versions and the result of comparing its measurements with the
  RIMs); and its ``node.approve`` entries (an operator let a pending node in);
- the node's ``release.grant`` entries before the output: the read grants are the inputs
  (``datasets``), the latest write grant of the output's key and version is the ``write_grant``;
- the node's ``node.revoke`` entries (any, up to the checkpoint);
- the ``policy.change`` entry that installed the write grant's policy version, if the ledger has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kms.audit.entry import Decision, Entry, Kind

# registration outcomes whose evidence verified (a pending node's claims are verified too; an operator's
# node.approve then let it in)
VERIFIED = ("attested", "pending")
# a GPU's predicate field <- the registration entry's list field (one item per GPU, in the order sent)
GPU_FIELDS = (
    ("architecture", "gpu_architectures"),
    ("ueid", "gpu_ueids"),
    ("driver_version", "gpu_driver_versions"),
    ("vbios_version", "gpu_vbios_versions"),
    ("measurement_result", "gpu_measurement_results"),
)


class LineageInvalid(ValueError):
    """The entries do not describe one recorded output of one node."""


@dataclass(frozen=True)
class Lineage:
    """The predicate fields the entries determine (JSON-ready)."""

    output: dict[str, Any]
    node: dict[str, Any]
    cpu: dict[str, Any]
    gpus: list[dict[str, Any]]
    policy: dict[str, Any]
    datasets: list[dict[str, Any]]
    write_grant: dict[str, Any]
    revocations: list[dict[str, Any]]

    def sequences(self) -> list[int]:
        """Every ledger entry this lineage rests on (what a statement proves), in order."""
        used = {self.output["sequence"], self.write_grant["sequence"], *self.cpu["registrations"]}
        used |= set(self.cpu["approvals"])
        used |= {d["sequence"] for d in self.datasets} | {r["sequence"] for r in self.revocations}
        if self.policy["sequence"] is not None:
            used.add(self.policy["sequence"])
        return sorted(used)

    def to_obj(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "node": self.node,
            "cpu": self.cpu,
            "gpus": self.gpus,
            "policy": self.policy,
            "datasets": self.datasets,
            "write_grant": self.write_grant,
            "revocations": self.revocations,
        }


def _f(entry: Entry, name: str) -> Any:
    return entry.fields.get(name)


def _gpus(registration: Entry) -> list[dict[str, Any]]:
    """The GPUs the registration entry lists (none for a node without GPUs)."""
    count = _f(registration, "gpu_count")
    lists = {name: _f(registration, field) for name, field in GPU_FIELDS}
    if count is None and all(v is None for v in lists.values()):
        return []
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise LineageInvalid(f"registration entry {registration.seq} has no valid gpu_count")
    for name, values in lists.items():
        if not isinstance(values, tuple | list) or len(values) != count:
            raise LineageInvalid(
                f"registration entry {registration.seq} lists {name} for other than its {count} GPU(s)"
            )
    return [{name: values[i] for name, values in lists.items()} for i in range(count)]


def derive(entries: Sequence[Entry], output_seq: int) -> Lineage:
    """The lineage of the output at ``output_seq`` according to ``entries`` (any order)."""
    by_seq = {e.seq: e for e in entries}
    out = by_seq.get(output_seq)
    if out is None or out.kind is not Kind.MODEL_OUTPUT or out.decision is not Decision.GRANT:
        raise LineageInvalid(f"entry {output_seq} is not a recorded model.output")
    node_id = _f(out, "node_id")
    mine = sorted((e for e in entries if _f(e, "node_id") == node_id), key=lambda e: e.seq)
    registrations = [
        e
        for e in mine
        if e.kind in (Kind.REGISTRATION, Kind.NODE_RENEW)
        and e.seq < output_seq
        and _f(e, "state") in VERIFIED
        and _f(e, "claims_digest")
    ]
    if not registrations:
        raise LineageInvalid(f"no verified registration of node {node_id} before entry {output_seq}")
    reg = registrations[-1]
    grants = [e for e in mine if e.kind is Kind.RELEASE_GRANT and e.seq < output_seq]
    key, version = _f(out, "key_name"), _f(out, "key_version")
    writes = [
        e
        for e in grants
        if _f(e, "purpose") == "write" and _f(e, "key_name") == key and _f(e, "key_version") == version
    ]
    if not writes:
        raise LineageInvalid(
            f"no write grant of {key} v{version} to node {node_id} before entry {output_seq}"
        )
    write = writes[-1]
    policy_version = _f(write, "policy_version")
    changes = [
        e
        for e in entries
        if e.kind is Kind.POLICY_CHANGE and _f(e, "policy_version") == policy_version and e.seq < output_seq
    ]
    policy: dict[str, Any] = {"version": policy_version, "digest": None, "sequence": None}
    if changes:
        policy = {
            "version": policy_version,
            "digest": _f(changes[-1], "new_policy_digest"),
            "sequence": changes[-1].seq,
        }
    return Lineage(
        output={
            "sequence": out.seq,
            "time": out.time,
            "key": key,
            "version": version,
            "size": _f(out, "output_size"),
            "header_sha256": _f(out, "header_sha256"),
            "sealed_sha256": _f(out, "sealed_sha256"),
            "job": _f(out, "job_name") or "",
            "step": _f(out, "step"),
        },
        node={"id": node_id, "name": _f(reg, "node_name")},
        cpu={
            "tee": _f(reg, "tee"),
            "measurement": _f(reg, "measurement"),
            "tcb_status": _f(reg, "tcb_status"),
            "claims_digest": _f(reg, "claims_digest"),
            "registration_sequence": reg.seq,
            "registrations": [e.seq for e in registrations],
            "approvals": [e.seq for e in mine if e.kind is Kind.NODE_APPROVE and e.seq < output_seq],
        },
        gpus=_gpus(reg),
        policy=policy,
        datasets=[
            {"sequence": e.seq, "key": _f(e, "key_name"), "version": _f(e, "key_version"), "time": e.time}
            for e in grants
            if _f(e, "purpose") == "read"
        ],
        write_grant={"sequence": write.seq, "key": key, "version": version, "time": write.time},
        revocations=[{"sequence": e.seq, "time": e.time} for e in mine if e.kind is Kind.NODE_REVOKE],
    )


def after_revocation(entries: Sequence[Entry], lineage: Lineage) -> str | None:
    """A message if a grant or the output comes after one of the node's revocations, else None."""
    if not lineage.revocations:
        return None
    first = min(lineage.revocations, key=lambda r: r["sequence"])
    used = [*lineage.datasets, lineage.write_grant, {"sequence": lineage.output["sequence"],
                                                     "time": lineage.output["time"]}]  # fmt: skip
    for item in used:
        if item["sequence"] > first["sequence"] or item["time"] > first["time"]:
            return (
                f"entry {item['sequence']} ({item['time']}) comes after the node's revocation at entry "
                f"{first['sequence']} ({first['time']})"
            )
    return None
