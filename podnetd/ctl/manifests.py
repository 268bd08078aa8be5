"""apply/create -f: files, directories and stdin split into objects.

A file is a YAML stream (documents apart by ---) or JSON; a List (kind: List, or any kind ending
in List with items) stands for its items. Every object must be a mapping with apiVersion, kind
and a metadata.name (or generateName), as kubectl's client-side validation asks.
"""
import dataclasses
import json
import os
import sys

from . import safeyaml
from .apiclient import KubectlError

EXTENSIONS = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 64 << 20


@dataclasses.dataclass
class Manifest:
    source: str               # the file it came from ("-" for stdin)
    obj: dict


def sources(paths: list[str], recursive: bool = False) -> list[str]:
    """The files -f names: a file, '-', or a directory's .yaml/.yml/.json files, sorted."""
    out = []
    for path in paths:
        if path == "-":
            out.append(path)
        elif os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(dirs) if recursive else []
                out += [os.path.join(root, f) for f in sorted(files) if f.endswith(EXTENSIONS)]
        elif os.path.exists(path):
            out.append(path)
        else:
            raise KubectlError(f'the path "{path}" does not exist')
    return out


def read(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise KubectlError(f'error reading "{path}": {e.strerror}') from None
    if len(data) > MAX_FILE_BYTES:
        raise KubectlError(f'"{path}" is larger than {MAX_FILE_BYTES >> 20} MiB')
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KubectlError(f'"{path}" is not UTF-8 text') from None


def documents(text: str, source: str) -> list:
    """The documents of one file: JSON when it reads as JSON, else a YAML stream."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            return [json.loads(text)]
        except ValueError:
            pass                                 # flow-style YAML starts with { as well
    try:
        return [d for d in safeyaml.load_all(text) if d is not None]
    except safeyaml.YamlError as e:
        raise KubectlError(f'error parsing "{source}": {e}') from None


def _expand(doc, source: str, where: str) -> list[Manifest]:
    if isinstance(doc, dict) and isinstance(doc.get("kind"), str) and \
            doc["kind"].endswith("List") and "items" in doc:
        items = doc["items"]
        if not isinstance(items, list):
            raise KubectlError(f'error validating "{source}": {where}items: must be a list')
        out = []
        for i, item in enumerate(items):
            out += _expand(item, source, f"{where}items[{i}].")
        return out
    check(doc, source, where)
    return [Manifest(source, doc)]


def check(doc, source: str, where: str = "") -> None:
    problems = []
    if not isinstance(doc, dict):
        raise KubectlError(f'error validating "{source}": {where.rstrip(".") or "document"}: '
                           f"an object must be a mapping, not {type(doc).__name__}")
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc.get(key):
            problems.append(f"{where}{key} not set")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        problems.append(f"{where}metadata not set")
    else:
        name, generate = meta.get("name"), meta.get("generateName")
        if not (isinstance(name, str) and name) and not (isinstance(generate, str) and generate):
            problems.append(f"{where}metadata.name not set")
        ns = meta.get("namespace")
        if ns is not None and not isinstance(ns, str):
            problems.append(f"{where}metadata.namespace must be a string")
    if problems:
        raise KubectlError(f'error validating "{source}": error validating data: '
                           f"[{', '.join(problems)}]")


def load(paths: list[str], recursive: bool = False) -> list[Manifest]:
    out = []
    for path in sources(paths, recursive):
        for i, doc in enumerate(documents(read(path), path)):
            out += _expand(doc, path, "")
    if not out:
        raise KubectlError("no objects passed to apply")
    return out
