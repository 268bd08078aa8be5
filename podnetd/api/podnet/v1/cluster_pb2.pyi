import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PEER_MODE_UNSPECIFIED: _ClassVar[PeerMode]
    PEER_MODE_SELF: _ClassVar[PeerMode]
    PEER_MODE_HOST_GW: _ClassVar[PeerMode]
    PEER_MODE_VXLAN: _ClassVar[PeerMode]
    PEER_MODE_UNREACHABLE: _ClassVar[PeerMode]

class NodeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATUS_UNSPECIFIED: _ClassVar[NodeStatus]
    NODE_STATUS_READY: _ClassVar[NodeStatus]
    NODE_STATUS_NOT_READY: _ClassVar[NodeStatus]

class Store(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORE_UNSPECIFIED: _ClassVar[Store]
    STORE_STATIC: _ClassVar[Store]
    STORE_ETCD: _ClassVar[Store]

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_UNSPECIFIED: _ClassVar[Backend]
    BACKEND_AUTO: _ClassVar[Backend]
    BACKEND_HOST_GW: _ClassVar[Backend]
    BACKEND_VXLAN: _ClassVar[Backend]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_ROUTE: _ClassVar[EntryKind]
    ENTRY_KIND_NEIGH: _ClassVar[EntryKind]
    ENTRY_KIND_FDB: _ClassVar[EntryKind]

class EntryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_STATE_UNSPECIFIED: _ClassVar[EntryState]
    ENTRY_STATE_PRESENT: _ClassVar[EntryState]
    ENTRY_STATE_MISSING: _ClassVar[EntryState]
    ENTRY_STATE_FOREIGN: _ClassVar[EntryState]
PEER_MODE_UNSPECIFIED: PeerMode
PEER_MODE_SELF: PeerMode
PEER_MODE_HOST_GW: PeerMode
PEER_MODE_VXLAN: PeerMode
PEER_MODE_UNREACHABLE: PeerMode
NODE_STATUS_UNSPECIFIED: NodeStatus
NODE_STATUS_READY: NodeStatus
NODE_STATUS_NOT_READY: NodeStatus
STORE_UNSPECIFIED: Store
STORE_STATIC: Store
STORE_ETCD: Store
BACKEND_UNSPECIFIED: Backend
BACKEND_AUTO: Backend
BACKEND_HOST_GW: Backend
BACKEND_VXLAN: Backend
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_ROUTE: EntryKind
ENTRY_KIND_NEIGH: EntryKind
ENTRY_KIND_FDB: EntryKind
ENTRY_STATE_UNSPECIFIED: EntryState
ENTRY_STATE_PRESENT: EntryState
ENTRY_STATE_MISSING: EntryState
ENTRY_STATE_FOREIGN: EntryState

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterNode(_message.Message):
    __slots__ = ("name", "underlay_ip", "pod_cidr", "vtep_mac", "mode", "problem", "peer_address", "heartbeat_age", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    VTEP_MAC_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    underlay_ip: str
    pod_cidr: str
    vtep_mac: str
    mode: PeerMode
    problem: str
    peer_address: str
    heartbeat_age: _duration_pb2.Duration
    status: NodeStatus
    def __init__(self, name: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., pod_cidr: _Optional[str] = ..., vtep_mac: _Optional[str] = ..., mode: _Optional[_Union[PeerMode, str]] = ..., problem: _Optional[str] = ..., peer_address: _Optional[str] = ..., heartbeat_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., status: _Optional[_Union[NodeStatus, str]] = ...) -> None: ...

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
    store: Store
    backend: Backend
    problem: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[ClusterNode, _Mapping]]] = ..., self_name: _Optional[str] = ..., cluster_cidr: _Optional[str] = ..., store: _Optional[_Union[Store, str]] = ..., backend: _Optional[_Union[Backend, str]] = ..., problem: _Optional[str] = ...) -> None: ...

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
    kind: EntryKind
    node: str
    mode: PeerMode
    destination: str
    via: str
    dev: str
    state: EntryState
    def __init__(self, kind: _Optional[_Union[EntryKind, str]] = ..., node: _Optional[str] = ..., mode: _Optional[_Union[PeerMode, str]] = ..., destination: _Optional[str] = ..., via: _Optional[str] = ..., dev: _Optional[str] = ..., state: _Optional[_Union[EntryState, str]] = ...) -> None: ...

class ListRoutesResponse(_message.Message):
    __slots__ = ("entries", "route_protocol")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ROUTE_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ProgrammedEntry]
    route_protocol: int
    def __init__(self, entries: _Optional[_Iterable[_Union[ProgrammedEntry, _Mapping]]] = ..., route_protocol: _Optional[int] = ...) -> None: ...
