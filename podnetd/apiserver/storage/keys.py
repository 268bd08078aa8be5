"""Checks both stores apply to what they are given, so that SQLite and etcd refuse the same keys
and values the same way (the layer above builds keys; a bad one is a bug there, told clearly).

Keys are str, start with "/", hold no NUL or other control character and are at most
MAX_KEY_BYTES of UTF-8; a prefix for list/watch is a key prefix ("/pods/" or "/"), matched byte
by byte as etcd does, so both stores sort keys the same way (UTF-8 byte order = code point order).
"""
from .base import StoreError

MAX_KEY_BYTES = 1024
# Above the API's 3 MiB request limit plus the metadata the server adds; etcd must be started
# with a --max-request-bytes at least this large (its default is 1.5 MiB).
MAX_VALUE_BYTES = 4 * 1024 * 1024


class InvalidKey(StoreError, ValueError):
    pass


class ValueTooLarge(StoreError, ValueError):
    pass


def check_key(key: str, what: str = "key") -> bytes:
    """The key's UTF-8 bytes; InvalidKey unless it is a well-formed key (or prefix)."""
    if not isinstance(key, str):
        raise InvalidKey(f"{what} of type {type(key).__name__}, not str")
    if not key.startswith("/"):
        raise InvalidKey(f"{what} {key[:100]!r} does not start with '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in key):
        raise InvalidKey(f"{what} {key[:100]!r} holds a control character")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} {key[:100]!r} is not valid Unicode") from None
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKey(f"{what} of {len(raw)} bytes (at most {MAX_KEY_BYTES})")
    return raw


def check_value(key: str, value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{key}: value of type {type(value).__name__}, not bytes")
    value = bytes(value)
    if len(value) > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"{key}: value of {len(value)} bytes is over the store's limit of "
                            f"{MAX_VALUE_BYTES}")
    return value


def check_revision(key: str, revision: int | None) -> None:
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)
                                 or revision < 1):
        raise ValueError(f"{key}: expected revision {revision!r} is not a positive integer")


def prefix_end(prefix: bytes) -> bytes | None:
    """The first byte string after every string that starts with prefix (etcd's range_end for a
    prefix); None when there is none (a prefix of only 0xff bytes: to the end)."""
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xff:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return None
