"""Between the daemon's words and the API's types: enums <-> the lowercase words podnetd and
podnetctl use ("host-gw", "releasing"), and seconds <-> google.protobuf Timestamp / Duration.

An API enum's values are named PREFIX_WORD with PREFIX the enum's name in UPPER_SNAKE (buf's
ENUM_VALUE_PREFIX rule): EndpointState.ENDPOINT_STATE_RELEASING is "releasing", PeerMode
PEER_MODE_HOST_GW is "host-gw". The zero value (*_UNSPECIFIED) is the empty word.
"""
import re

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.timestamp_pb2 import Timestamp


def _prefix(enum) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"


def enum_value(enum, word: str) -> int:
    """enum_value(cluster_pb2.PeerMode, "host-gw") -> PEER_MODE_HOST_GW; "" -> 0."""
    if not word:
        return 0
    name = _prefix(enum) + word.upper().replace("-", "_")
    try:
        return enum.Value(name)
    except ValueError:
        raise ValueError(f"{enum.DESCRIPTOR.full_name}: no value for {word!r} ({name})") from None


def enum_word(enum, value: int) -> str:
    """enum_word(cluster_pb2.PeerMode, PEER_MODE_HOST_GW) -> "host-gw"; 0 -> ""; a value this
    build does not know (a newer peer) -> "unknown(N)"."""
    if not value:
        return ""
    try:
        name = enum.Name(value)
    except ValueError:
        return f"unknown({value})"
    return name.removeprefix(_prefix(enum)).lower().replace("_", "-")


def timestamp(unix_seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_seconds * 1e9))
    return ts


def unix_seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


# google.protobuf.Duration's range: about +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000


def duration(seconds: float) -> Duration:
    """Raises ValueError for NaN, infinities and values outside a Duration's range."""
    if not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:  # also NaN
        raise ValueError(f"{seconds} s: not a duration (at most {MAX_DURATION_SECONDS} s)")
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def message_dict(message, defaults: bool = True) -> dict:
    """A message as podnetctl prints it (-o json/yaml): protobuf's JSON mapping with the field
    names of the .proto (Timestamp as RFC 3339, Duration as "1.5s"), enums as their words."""
    out = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=defaults)
    _enum_words(message, out)
    return out


def _enum_words(message, out: dict) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in out:
            continue
        value = getattr(message, field.name)
        repeated = field.is_repeated
        if field.enum_type is not None:
            enum = EnumTypeWrapper(field.enum_type)
            out[field.name] = [enum_word(enum, v) for v in value] if repeated else enum_word(enum, value)
        elif field.message_type is not None and not field.message_type.full_name.startswith("google."):
            for sub, sub_out in (zip(value, out[field.name]) if repeated else [(value, out[field.name])]):
                _enum_words(sub, sub_out)
