"""Node-agent settings and the objects built from them (client, evidence provider).

Settings come from the command line, falling back to ``SOVEREIGN_NODE_*`` environment variables.
A simulated provider (``simulated-snp``/``simulated-tdx``, development only) signs with a test PKI
saved by ``sovereign evidence simulate --save-pki DIR`` and named by ``--sim-pki DIR``; a control plane
accepts its evidence only under that PKI's simulation trust profile (the production profile refuses
it with TEST_ROOT_IN_PRODUCTION). The resident agent's settings (``AgentSettings``) come from a
``node.toml`` (``load_node_toml``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from enclave.choices import GPU_CHOICES, PROVIDER_CHOICES
from enclave.client import DEFAULT_TIMEOUT, ControlPlaneClient
from enclave.errors import NodeCode, NodeError
from enclave.providers import EvidenceProvider, detect_provider
from enclave.providers.gpu import MAX_SIMULATED_GPUS, REPORT_FAULTS, GpuEvidenceSource, NoGpu, SimulatedGpus

SIMULATED = frozenset({"simulated-snp", "simulated-tdx"})
ENV_PREFIX = "SOVEREIGN_NODE_"
DEFAULT_RENEW_MARGIN = timedelta(seconds=60)
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _invalid(message: str, hint: str | None = None) -> NodeError:
    return NodeError(message, code=NodeCode.CONFIG_INVALID, hint=hint)


def check_label(value: str, what: str) -> str:
    if not _LABEL.fullmatch(value):
        raise _invalid(f"{what} {value!r} is not an RFC 1123 label (1-63 of [a-z0-9-], no '-' at the ends)")
    return value


@dataclass(frozen=True)
class NodeConfig:
    server: str
    node_name: str
    ca: Path | None = None
    insecure_dev: bool = False
    provider: str = "auto"
    groups: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    renew_margin: timedelta = DEFAULT_RENEW_MARGIN
    sim_pki: Path | None = None
    sim_measurement: bytes = bytes(48)
    sim_gpus: int = 0  # simulated H100s beside a simulated CPU (DIR/gpu-pki.json of --sim-pki)
    sim_gpu_fault: str | None = None
    gpu: str = "none"  # where GPU evidence comes from: none, nvml (NvmlGpuSource), simulated (sim_gpus)
    require_gpus: bool = False  # nvml: no usable GPU in CC mode is an error, not the "no GPU" state

    def __post_init__(self) -> None:
        if not self.server:
            raise _invalid("no control-plane address", hint="pass --server HOST:PORT")
        check_label(self.node_name, "node name")
        for group in self.groups:
            check_label(group, "group")
        if self.provider not in PROVIDER_CHOICES:
            raise _invalid(f"unknown provider {self.provider!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
        if self.ca is None and not self.insecure_dev:
            raise _invalid(
                "no control-plane CA to pin",
                hint="pass --ca FILE (the control plane's CA certificate, PEM); --insecure-dev only for development",
            )
        if self.ca is not None and self.insecure_dev:
            raise _invalid("--ca and --insecure-dev exclude each other")
        if not self.timeout > 0 or self.renew_margin <= timedelta(0):
            raise _invalid("timeout and renewal margin must be positive")
        if self.sim_pki is not None and self.provider not in SIMULATED:
            raise _invalid("--sim-pki goes with --provider simulated-snp or simulated-tdx")
        if len(self.sim_measurement) != 48:
            raise _invalid("the simulated measurement is 48 bytes (96 hex digits)")
        if not 0 <= self.sim_gpus <= MAX_SIMULATED_GPUS:
            raise _invalid(f"--sim-gpus is 0 to {MAX_SIMULATED_GPUS}")
        if self.gpu not in GPU_CHOICES:
            raise _invalid(f"unknown gpu source {self.gpu!r}; choose one of {', '.join(GPU_CHOICES)}")
        if (self.gpu == "simulated") != (self.sim_gpus > 0):
            raise _invalid(
                'gpu = "simulated" goes with sim_gpus N (N >= 1), and sim_gpus with gpu = "simulated"',
                hint="--sim-gpus N alone selects simulated GPUs",
            )
        if self.require_gpus and self.gpu == "none":
            raise _invalid('require_gpus needs a GPU source (gpu = "nvml" or "simulated")')
        if (self.sim_gpus or self.sim_gpu_fault) and self.provider not in SIMULATED:
            raise _invalid("--sim-gpus and --sim-gpu-fault go with --provider simulated-snp or simulated-tdx")
        if self.sim_gpu_fault is not None and (self.sim_gpu_fault not in REPORT_FAULTS or not self.sim_gpus):
            raise _invalid(
                f"--sim-gpu-fault is one of {', '.join(REPORT_FAULTS)} and needs --sim-gpus N",
            )

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        server: str | None = None,
        node_name: str | None = None,
        ca: Path | None = None,
        insecure_dev: bool = False,
        provider: str | None = None,
        groups: Sequence[str] | None = None,
        timeout: float | None = None,
        sim_pki: Path | None = None,
        sim_measurement: str | None = None,
        sim_gpus: int | None = None,
        sim_gpu_fault: str | None = None,
        gpu: str | None = None,
        require_gpus: bool | None = None,
    ) -> NodeConfig:
        """Explicit values win over ``SOVEREIGN_NODE_*`` variables (SERVER, NAME, CA, PROVIDER, GROUPS,
        SIM_PKI, SIM_MEASUREMENT, SIM_GPUS, SIM_GPU_FAULT, GPU, REQUIRE_GPUS). Without a GPU source named,
        simulated GPUs (a count) select ``simulated``, else ``none``."""
        env = os.environ if environ is None else environ

        def pick(value: str | None, name: str) -> str | None:
            return value if value is not None else env.get(ENV_PREFIX + name)

        env_ca = pick(None, "CA")
        env_groups = pick(None, "GROUPS")
        count = sim_gpus if sim_gpus is not None else _count(pick(None, "SIM_GPUS") or "0")
        source = pick(gpu, "GPU") or ("simulated" if count else "none")
        required = require_gpus if require_gpus is not None else _flag(pick(None, "REQUIRE_GPUS") or "")
        return cls(
            server=pick(server, "SERVER") or "",
            node_name=pick(node_name, "NAME") or "",
            ca=ca if ca is not None else (Path(env_ca) if env_ca and not insecure_dev else None),
            insecure_dev=insecure_dev,
            provider=pick(provider, "PROVIDER") or "auto",
            groups=tuple(groups)
            if groups is not None
            else tuple(g for g in (env_groups or "").split(",") if g),
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            sim_pki=sim_pki if sim_pki is not None else (Path(p) if (p := pick(None, "SIM_PKI")) else None),
            sim_measurement=parse_measurement(pick(sim_measurement, "SIM_MEASUREMENT") or ""),
            sim_gpus=count,
            sim_gpu_fault=pick(sim_gpu_fault, "SIM_GPU_FAULT") or None,
            gpu=source,
            require_gpus=required,
        )


def _count(text: str) -> int:
    if not text.isdigit():
        raise _invalid(f"SOVEREIGN_NODE_SIM_GPUS {text[:20]!r} is not a count")
    return int(text)


def _flag(text: str) -> bool:
    if text.lower() in ("", "0", "false", "no"):
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    raise _invalid(f"SOVEREIGN_NODE_REQUIRE_GPUS {text[:20]!r} is not true or false")


def parse_measurement(text: str) -> bytes:
    """48 bytes from hex (shorter values are zero-padded, as ``evidence simulate --measurement``)."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise _invalid(f"simulated measurement {text[:100]!r} is not hex") from None
    if len(value) > 48:
        raise _invalid("the simulated measurement is at most 48 bytes (96 hex digits)")
    return value.ljust(48, b"\0")


def build_client(config: NodeConfig) -> ControlPlaneClient:
    ca_pem = None
    if config.ca is not None:
        try:
            ca_pem = config.ca.read_bytes()
        except OSError as exc:
            raise _invalid(f"cannot read the CA file {config.ca}: {exc.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise _invalid(f"{config.ca} holds no PEM certificate")
    return ControlPlaneClient(
        config.server, ca_pem=ca_pem, insecure_dev=config.insecure_dev, timeout=config.timeout
    )


def build_provider(config: NodeConfig) -> EvidenceProvider:
    """The configured hardware provider, or a simulated one signing with the saved PKI ``sim_pki``."""
    if config.provider in SIMULATED:
        return _simulated_provider(config)
    return detect_provider(prefer=None if config.provider == "auto" else config.provider)


def _simulated_provider(config: NodeConfig) -> EvidenceProvider:
    from attestation.simulate.persist import PkiFileError, load_pki  # development only: loaded on demand
    from enclave.providers.simulated import simulated_snp, simulated_tdx

    if config.sim_pki is None:
        raise NodeError(
            f"the {config.provider} provider needs the simulator PKI the control plane trusts (no SimulatedPki "
            "given)",
            code=NodeCode.PROVIDER_UNAVAILABLE,
            hint="save one with `sovereign evidence simulate --save-pki DIR` (or `sovereign dev up`) and pass "
            "--sim-pki DIR; or run on SEV-SNP/TDX hardware",
        )
    path = config.sim_pki / "pki.json"
    try:
        pki = load_pki(path.read_bytes())
    except OSError as exc:
        raise NodeError(
            f"cannot read the simulator PKI {path}: {exc.strerror}",
            code=NodeCode.PROVIDER_UNAVAILABLE,
            hint="pass the folder given to `sovereign evidence simulate --save-pki`",
        ) from None
    except PkiFileError as exc:
        raise NodeError(f"{path}: {exc}", code=NodeCode.PROVIDER_UNAVAILABLE) from None
    if config.provider == "simulated-snp":
        return simulated_snp(pki, measurement=config.sim_measurement)
    return simulated_tdx(pki, mrtd=config.sim_measurement)


def build_gpu_source(config: NodeConfig) -> GpuEvidenceSource:
    """The configured GPU source: none, NVML (``enclave.providers.gpu_nvml``; "no GPU" is a state unless
    ``require_gpus``), or simulated GPUs under ``--sim-pki DIR/gpu-pki.json``."""
    if config.gpu == "none":
        return NoGpu()
    if config.gpu == "nvml":
        # imported here: the GPU verifier core it parses with loads signxml/lxml, which nodes without
        # GPUs (and the resident agent's idle memory) should not pay for
        from enclave.providers.gpu_nvml import NvmlGpuSource

        return NvmlGpuSource(require_gpus=config.require_gpus)
    from attestation.simulate.gpu_persist import GpuPkiFileError, load_gpu_simulator  # development only

    path = (config.sim_pki or Path(".")) / "gpu-pki.json"
    if config.sim_pki is None:
        raise NodeError(
            "simulated GPUs need the simulator PKI the control plane trusts",
            code=NodeCode.PROVIDER_UNAVAILABLE,
            hint="pass --sim-pki DIR (saved by `sovereign evidence simulate --save-pki DIR`)",
        )
    try:
        simulator = load_gpu_simulator(path.read_bytes())
    except OSError as exc:
        raise NodeError(
            f"cannot read the GPU simulator PKI {path}: {exc.strerror}",
            code=NodeCode.PROVIDER_UNAVAILABLE,
            hint="save the PKI again with a version that writes gpu-pki.json",
        ) from None
    except GpuPkiFileError as exc:
        raise NodeError(f"{path}: {exc}", code=NodeCode.PROVIDER_UNAVAILABLE) from None
    return SimulatedGpus(
        simulator, config.sim_gpus, seed=f"{config.node_name}-gpu", fault=config.sim_gpu_fault
    )


# --- the resident agent's settings (node.toml) --------------------------------------------------------

REVOCATION_ACTIONS = ("deny", "terminate")
DEFAULT_SOCKET = Path("/run/sovereign/agent.sock")
_NODE_KEYS = {"server", "node_name", "ca", "insecure_dev", "provider", "groups", "timeout", "sim_pki"}
_NODE_KEYS |= {"sim_measurement", "agent", "gpu", "require_gpus", "sim_gpus", "sim_gpu_fault"}
_AGENT_KEYS = {
    "socket",
    "socket_mode",
    "socket_group",
    "allowed_uids",
    "allowed_gids",
    "revocation_action",
    "check_interval",
    "keys",
    "metrics_listen",
    "hand_out_keys",
}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` with a loopback HOST (``127.0.0.1``, ``[::1]``, ``localhost``) -> (host, port)."""
    import ipaddress

    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback, port = False, -1
    if not sep or not loopback or not 0 <= port <= 65535:
        raise _invalid(
            f"metrics_listen {text!r} is not a loopback HOST:PORT",
            'e.g. "127.0.0.1:9464"; the agent\'s metrics are served on loopback only',
        )
    return ("127.0.0.1" if host == "localhost" else host), port


@dataclass(frozen=True)
class AgentSettings:
    """``[agent]`` in node.toml: the local socket and what happens on revocation."""

    socket: Path = DEFAULT_SOCKET
    socket_mode: int = 0o660
    socket_group: str = ""
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()
    revocation_action: str = "deny"
    check_interval: float = 30.0
    keys: tuple[str, ...] = ()  # released at start (fail fast) and held
    metrics_listen: str = ""  # loopback HOST:PORT for Prometheus; "" = no metrics endpoint
    hand_out_keys: bool = True  # False: workloads only open/seal through the agent (via_agent)

    def __post_init__(self) -> None:
        if self.revocation_action not in REVOCATION_ACTIONS:
            raise _invalid(f"revocation_action must be one of {', '.join(REVOCATION_ACTIONS)}")
        if self.socket_mode & ~0o777 or self.socket_mode & 0o007:
            raise _invalid(f"socket_mode {self.socket_mode:o}: at most 0770 (never open to every user)")
        if not self.check_interval > 0:
            raise _invalid("check_interval must be positive")
        if any(not isinstance(i, int) or i < 0 for i in (*self.allowed_uids, *self.allowed_gids)):
            raise _invalid("allowed_uids / allowed_gids are lists of numeric ids")
        if self.metrics_listen:
            parse_listen(self.metrics_listen)


def _typed(doc: Mapping[str, object], key: str, kind: type | tuple[type, ...], where: str) -> object:
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _invalid(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def load_node_toml(path: Path, environ: Mapping[str, str] | None = None) -> tuple[NodeConfig, AgentSettings]:
    """node.toml (see deploy/config/node.toml): top-level node settings, ``[agent]`` for the agent.
    ``SOVEREIGN_NODE_*`` variables fill what the file leaves out."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _invalid(f"{path} is not TOML: {exc}") from None
    unknown = set(doc) - _NODE_KEYS
    agent_doc = doc.get("agent", {})
    if not isinstance(agent_doc, dict):
        raise _invalid(f"{path}: [agent] must be a table")
    unknown |= {f"agent.{k}" for k in set(agent_doc) - _AGENT_KEYS}
    if unknown:
        raise _invalid(f"{path}: unknown settings {sorted(unknown)}")
    where = str(path)
    text = {
        k: str(_typed(doc, k, str, where))
        for k in ("server", "node_name", "ca", "provider", "sim_pki", "gpu", "sim_gpu_fault")
        if k in doc
    }
    groups = _typed(doc, "groups", list, where) if "groups" in doc else None
    if groups is not None and not all(isinstance(g, str) for g in groups):  # type: ignore[attr-defined]
        raise _invalid(f"{path}: groups is a list of names")
    timeout = float(_typed(doc, "timeout", (int, float), where)) if "timeout" in doc else None  # type: ignore[arg-type]
    insecure = bool(_typed(doc, "insecure_dev", bool, where)) if "insecure_dev" in doc else False
    measurement = str(_typed(doc, "sim_measurement", str, where)) if "sim_measurement" in doc else None
    sim_gpus = int(_typed(doc, "sim_gpus", int, where)) if "sim_gpus" in doc else None  # type: ignore[call-overload]
    require_gpus = bool(_typed(doc, "require_gpus", bool, where)) if "require_gpus" in doc else None
    config = NodeConfig.resolve(
        environ,
        server=text.get("server"),
        node_name=text.get("node_name"),
        ca=Path(text["ca"]) if "ca" in text else None,
        insecure_dev=insecure,
        provider=text.get("provider"),
        groups=list(groups) if groups is not None else None,  # type: ignore[call-overload]
        timeout=timeout,
        sim_pki=Path(text["sim_pki"]) if "sim_pki" in text else None,
        sim_measurement=measurement,
        sim_gpus=sim_gpus,
        sim_gpu_fault=text.get("sim_gpu_fault"),
        gpu=text.get("gpu"),
        require_gpus=require_gpus,
    )
    a: dict[str, object] = {}
    if "socket" in agent_doc:
        a["socket"] = Path(str(_typed(agent_doc, "socket", str, where)))
    if "socket_mode" in agent_doc:
        mode = _typed(agent_doc, "socket_mode", (str, int), where)
        try:
            a["socket_mode"] = int(mode, 8) if isinstance(mode, str) else mode
        except ValueError:
            raise _invalid(f'{path}: socket_mode {mode!r} is not octal (e.g. "0660")') from None
    if "socket_group" in agent_doc:
        a["socket_group"] = str(_typed(agent_doc, "socket_group", (str, int), where))
    for key in ("allowed_uids", "allowed_gids", "keys"):
        if key in agent_doc:
            a[key] = tuple(_typed(agent_doc, key, list, where))  # type: ignore[arg-type]
    if "revocation_action" in agent_doc:
        a["revocation_action"] = str(_typed(agent_doc, "revocation_action", str, where))
    if "hand_out_keys" in agent_doc:
        a["hand_out_keys"] = bool(_typed(agent_doc, "hand_out_keys", bool, where))
    if "metrics_listen" in agent_doc:
        a["metrics_listen"] = str(_typed(agent_doc, "metrics_listen", str, where))
    if "check_interval" in agent_doc:
        a["check_interval"] = float(_typed(agent_doc, "check_interval", (int, float), where))  # type: ignore[arg-type]
    return config, AgentSettings(**a)  # type: ignore[arg-type]
