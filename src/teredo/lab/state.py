"""A lab's state on disk, so that `down`, `status` and `exec` work from another process.

/run/teredo-lab/<name>/ holds state.json (nodes, NAT kinds, roles with pids, configs and logs),
the generated configuration files, the role logs, Miredo's pid files and our control sockets.
state.json is written before the first namespace is created and rewritten after every step,
so a lab interrupted while it was being built can still be torn down.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from teredo.core.errors import UsageError

STATE_ROOT: Final = Path("/run/teredo-lab")
STATE_FILE: Final = "state.json"
DEFAULT_NAME: Final = "tl"
DEMO_NAME: Final = "tldemo"
# Short, so that "<name>-relay" stays readable; letters first so it never looks like an option.
NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9]{0,9}")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"lab name {name!r} is not 1 to 10 lowercase letters and digits starting with a letter"
        )
    return name


def state_dir(name: str) -> Path:
    return STATE_ROOT / check_name(name)


@dataclass(frozen=True, slots=True)
class RoleRecord:
    role: str
    node: str
    kind: str
    impl: str
    argv: list[str]
    config: str
    log: str
    pid: int | None = None
    starttime: int | None = None
    pidfile: str | None = None
    control_socket: str | None = None


@dataclass(slots=True)
class LabState:
    name: str
    nat1: str
    nat2: str
    namespaces: dict[str, str]  # node -> namespace name
    phase: str = "building"  # building | up | failed
    owner_pid: int = field(default_factory=os.getpid)
    roles: dict[str, RoleRecord] = field(default_factory=dict)
    ours_config: dict[str, list[str]] = field(default_factory=dict)  # role -> extra lines
    same_nat: bool = False  # both clients behind nat1
    hairpinning: bool = True  # with same_nat: whether nat1 hairpins

    @property
    def directory(self) -> Path:
        return state_dir(self.name)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = {name: asdict(record) for name, record in self.roles.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        roles = {name: RoleRecord(**record) for name, record in data.pop("roles", {}).items()}
        return cls(roles=roles, **data)


def save(state: LabState) -> None:
    path = state.directory / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(temporary, path)


def claim(state: LabState) -> None:
    """Create the state directory and file, failing if a lab with this name is up."""
    directory = state.directory
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(
            f"a lab named {state.name!r} is already up (or was not torn down); "
            f"run `teredo lab down --name {state.name}` first or choose another --name"
        ) from None
    os.close(fd)
    save(state)


def load(name: str) -> LabState | None:
    try:
        data = json.loads((state_dir(name) / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return LabState.from_json(data)


def list_labs() -> list[str]:
    try:
        return sorted(entry.name for entry in STATE_ROOT.iterdir() if (entry / STATE_FILE).exists())
    except FileNotFoundError:
        return []
