from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterNode(_message.Message):
    __slots__ = ("name", "underlay_ip", "pod_cidr", "vtep_mac", "heartbeat_age_seconds", "mode", "problem", "peer_address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    VTEP_MAC_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    underlay_ip: str
    pod_cidr: str
    vtep_mac: str
    heartbeat_age_seconds: float
    mode: str
    problem: str
    peer_address: str
    def __init__(self, name: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., pod_cidr: _Optional[str] = ..., vtep_mac: _Optional[str] = ..., heartbeat_age_seconds: _Optional[float] = ..., mode: _Optional[str] = ..., problem: _Optional[str] = ..., peer_address: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "self_name", "cluster_cidr", "store", "backend", "problem")
    NODES_FIELD_NUMBER: _ClassVar[int]
    SELF_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_CIDR_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[ClusterNode]
    self_name: str
    cluster_cidr: str
    store: str
    backend: str
    problem: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[ClusterNode, _Mapping]]] = ..., self_name: _Optional[str] = ..., cluster_cidr: _Optional[str] = ..., store: _Optional[str] = ..., backend: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class ListRoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProgrammedEntry(_message.Message):
    __slots__ = ("kind", "node", "mode", "destination", "via", "dev", "state")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    node: str
    mode: str
    destination: str
    via: str
    dev: str
    state: str
    def __init__(self, kind: _Optional[str] = ..., node: _Optional[str] = ..., mode: _Optional[str] = ..., destination: _Optional[str] = ..., via: _Optional[str] = ..., dev: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ListRoutesResponse(_message.Message):
    __slots__ = ("entries", "route_protocol")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ROUTE_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ProgrammedEntry]
    route_protocol: int
    def __init__(self, entries: _Optional[_Iterable[_Union[ProgrammedEntry, _Mapping]]] = ..., route_protocol: _Optional[int] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("name", "underlay_ip", "pod_cidr", "vtep_mac", "heartbeat_ms", "peer_address", "started_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    VTEP_MAC_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    underlay_ip: str
    pod_cidr: str
    vtep_mac: str
    heartbeat_ms: int
    peer_address: str
    started_ms: int
    def __init__(self, name: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., pod_cidr: _Optional[str] = ..., vtep_mac: _Optional[str] = ..., heartbeat_ms: _Optional[int] = ..., peer_address: _Optional[str] = ..., started_ms: _Optional[int] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("sender", "records", "cluster_cidr")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_CIDR_FIELD_NUMBER: _ClassVar[int]
    sender: str
    records: _containers.RepeatedCompositeFieldContainer[NodeRecord]
    cluster_cidr: str
    def __init__(self, sender: _Optional[str] = ..., records: _Optional[_Iterable[_Union[NodeRecord, _Mapping]]] = ..., cluster_cidr: _Optional[str] = ...) -> None: ...

class ExchangeResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[NodeRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[NodeRecord, _Mapping]]] = ...) -> None: ...
