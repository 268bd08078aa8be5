from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
