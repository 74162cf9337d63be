"""Policy text -> ``Policy``. ``load_policy`` and ``load_default`` are the only I/O in this package."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

from policies._lines import locate
from policies.errors import Code, PolicyError
from policies.model import Policy
from policies.schema import SchemaError, build_policy

MAX_POLICY_BYTES = 1 << 20
DEFAULTS = ("default", "demo")
_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Parse and validate a policy document. Raises ``PolicyError`` (POLICY_INVALID) naming source,
    key path and line; never anything else."""
    if not isinstance(text, str):
        raise PolicyError(f"{source}: expected TOML text, got {type(text).__name__}", source=source)
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: policy is larger than {MAX_POLICY_BYTES} bytes", source=source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        position = _TOML_POSITION.search(str(exc))
        line = int(position.group(1)) if position else text.count("\n") + 1
        what = _TOML_POSITION.sub("", str(exc)).strip()
        raise PolicyError(f"{source} line {line}: not valid TOML: {what}", source=source, line=line) from None
    except RecursionError:
        raise PolicyError(f"{source}: not valid TOML: nested too deeply", source=source) from None
    try:
        return build_policy(document, source)
    except SchemaError as exc:
        path = exc.path or ""
        found = locate(text, path) if path else None
        where = f"{source} line {found}" if found is not None else source
        raise PolicyError(
            f"{where}: {path or '<document>'}: {exc.what}", source=source, path=path, line=found
        ) from None


def load_policy(path: str | Path) -> Policy:
    """Read and parse a policy file (UTF-8 TOML, at most ``MAX_POLICY_BYTES``)."""
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(
            f"cannot read policy {source}: {exc.strerror or exc}", code=Code.POLICY_UNREADABLE, source=source
        ) from None
    return parse_policy(_decode(data, source), source)


def load_default(name: str = "default") -> Policy:
    """One of the policies shipped in ``policies/defaults`` (``default`` or ``demo``)."""
    if name not in DEFAULTS:
        raise PolicyError(
            f"no shipped policy named {name!r}; shipped: {', '.join(DEFAULTS)}", code=Code.POLICY_UNREADABLE
        )
    resource = resources.files("policies.defaults").joinpath(f"{name}.toml")
    source = f"policies/defaults/{name}.toml"
    return parse_policy(_decode(resource.read_bytes(), source), source)


def _decode(data: bytes, source: str) -> str:
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: policy is larger than {MAX_POLICY_BYTES} bytes", source=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{source}: not UTF-8 (byte {exc.start})", source=source) from None
