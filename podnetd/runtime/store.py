"""The pod store: one JSON file per pod under STATE_DIR/pods, written atomically, read back on
start (older files are migrated by Pod.from_json, see model.stage_from_flags)."""
import contextlib
import json
import logging
import os

from .model import Pod

log = logging.getLogger(__name__)


class PodStore:
    def __init__(self, state_dir: str):
        self.dir = state_dir

    def path(self, pod: Pod) -> str:
        return os.path.join(self.dir, f"{pod.namespace}_{pod.name}.json")

    def prepare(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def save(self, pod: Pod) -> None:
        path = self.path(pod)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(pod.to_json()))   # one shot: json.dump encodes in Python
        os.replace(tmp, path)

    def remove(self, pod: Pod) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(pod))

    def load_all(self) -> list[Pod]:
        """Every readable pod; a file that cannot be read is logged and skipped."""
        pods = []
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.dir, name)) as f:
                    pods.append(Pod.from_json(json.load(f)))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("pod state %s: cannot load: %s", name, e)
        return pods
