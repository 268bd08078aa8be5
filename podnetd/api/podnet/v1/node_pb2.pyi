import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EndpointState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_STATE_UNSPECIFIED: _ClassVar[EndpointState]
    ENDPOINT_STATE_ACTIVE: _ClassVar[EndpointState]
    ENDPOINT_STATE_RELEASING: _ClassVar[EndpointState]
ENDPOINT_STATE_UNSPECIFIED: EndpointState
ENDPOINT_STATE_ACTIVE: EndpointState
ENDPOINT_STATE_RELEASING: EndpointState

class AttachmentKey(_message.Message):
    __slots__ = ("container_id", "ifname")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("container_id", "ifname", "netns", "address", "gateway", "host_ifname", "mac", "mtu", "network", "state", "create_time")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    HOST_IFNAME_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    netns: str
    address: str
    gateway: str
    host_ifname: str
    mac: str
    mtu: int
    network: str
    state: EndpointState
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ..., address: _Optional[str] = ..., gateway: _Optional[str] = ..., host_ifname: _Optional[str] = ..., mac: _Optional[str] = ..., mtu: _Optional[int] = ..., network: _Optional[str] = ..., state: _Optional[_Union[EndpointState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("container_id", "ifname", "netns", "network")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    netns: str
    network: str
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("container_id", "ifname", "netns")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    netns: str
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ...) -> None: ...

class DetachResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("container_id", "ifname", "netns")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    netns: str
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class GarbageCollectRequest(_message.Message):
    __slots__ = ("valid_attachments", "network")
    VALID_ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    valid_attachments: _containers.RepeatedCompositeFieldContainer[AttachmentKey]
    network: str
    def __init__(self, valid_attachments: _Optional[_Iterable[_Union[AttachmentKey, _Mapping]]] = ..., network: _Optional[str] = ...) -> None: ...

class GarbageCollectResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, released: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("ready", "message", "free_addresses")
    READY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FREE_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    message: str
    free_addresses: int
    def __init__(self, ready: _Optional[bool] = ..., message: _Optional[str] = ..., free_addresses: _Optional[int] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("node_info",)
    NODE_INFO_FIELD_NUMBER: _ClassVar[int]
    node_info: NodeInfo
    def __init__(self, node_info: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_name", "pod_cidr", "gateway", "bridge", "mtu", "allocated", "capacity", "version", "pod_gso_max_size")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POD_GSO_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    pod_cidr: str
    gateway: str
    bridge: str
    mtu: int
    allocated: int
    capacity: int
    version: str
    pod_gso_max_size: int
    def __init__(self, node_name: _Optional[str] = ..., pod_cidr: _Optional[str] = ..., gateway: _Optional[str] = ..., bridge: _Optional[str] = ..., mtu: _Optional[int] = ..., allocated: _Optional[int] = ..., capacity: _Optional[int] = ..., version: _Optional[str] = ..., pod_gso_max_size: _Optional[int] = ...) -> None: ...
