"""The lab's record of everything it made (namespaces, processes, pods), kept in a JSON file.

Written ahead of each creation, so `lab down` after a crash still finds every namespace and
process: a record may name something that never came to be, never the other way round.
"""
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import threading

ROOT = "/run/podnet-lab"
STATE_FILE = "lab.json"


class StateError(Exception):
    pass


@dataclasses.dataclass
class LabState:
    name: str
    topology: str
    store: str
    options: dict = dataclasses.field(default_factory=dict)
    namespaces: list = dataclasses.field(default_factory=list)
    processes: dict = dataclasses.field(default_factory=dict)
    nodes: dict = dataclasses.field(default_factory=dict)
    pods: dict = dataclasses.field(default_factory=dict)
    root: str = ROOT

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.name)

    @property
    def path(self) -> str:
        return os.path.join(self.dir, STATE_FILE)

    def save(self) -> None:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "root"}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def node_dir(self, node: str) -> str:
        return os.path.join(self.dir, node)


def lab_dir(name: str, root: str = ROOT) -> str:
    return os.path.join(root, name)


def exists(name: str, root: str = ROOT) -> bool:
    return os.path.exists(os.path.join(lab_dir(name, root), STATE_FILE))


def create(state: LabState) -> None:
    if exists(state.name, state.root):
        raise StateError(f"lab {state.name!r} already exists (state in {state.dir}); "
                         f"run `podnetctl lab down --name {state.name}` first")
    os.makedirs(state.dir, mode=0o700, exist_ok=True)
    state.save()


def load(name: str, root: str = ROOT) -> LabState:
    path = os.path.join(lab_dir(name, root), STATE_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise StateError(f"no lab named {name!r} (no {path})") from None
    except (OSError, ValueError) as e:
        raise StateError(f"lab {name!r}: cannot read {path}: {e}") from None
    known = {f.name for f in dataclasses.fields(LabState)}
    return LabState(root=root, **{k: v for k, v in data.items() if k in known})


def names(root: str = ROOT) -> list[str]:
    try:
        return sorted(n for n in os.listdir(root) if exists(n, root))
    except FileNotFoundError:
        return []


_held: dict[str, int] = {}
_held_guard = threading.RLock()


@contextlib.contextmanager
def locked(name: str, root: str = ROOT):
    """Serialise changes to one lab between processes (CLI calls, tests, benches). Re-entrant
    within a process: flock on a second fd of the same file would wait for ourselves."""
    path = os.path.join(lab_dir(name, root), "lock")
    with _held_guard:
        if _held.get(path):
            _held[path] += 1
            try:
                yield
            finally:
                _held[path] -= 1
            return
        os.makedirs(lab_dir(name, root), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held[path] = 1
            try:
                yield
            finally:
                _held.pop(path, None)
        finally:
            os.close(fd)


def remove_dir(name: str, root: str = ROOT) -> None:
    shutil.rmtree(lab_dir(name, root), ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(root)  # only when no other lab is left
