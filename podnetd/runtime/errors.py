"""The runtime's error types. Each means one thing:

- PodError: a request cannot be served (unknown pod, bad manifest...); `status` is the API
  status it answers with (invalid, not_found, exists, precondition, internal).
- ContainerError: a container cannot be created; `reason` is the kubelet's waiting reason the
  container shows (CreateContainerConfigError, CreateContainerError). Image pulls have their
  own reasons (puller.py: ErrImagePull, ImagePullBackOff, ErrImageNeverPull).
- SandboxError: the pod's sandbox (netns, pause container, CNI network) cannot be made; the
  pod stays Pending and the sandbox is tried again with back-off.
"""

REQUEST_STATUSES = ("invalid", "not_found", "exists", "precondition", "internal")


class PodError(Exception):
    """A request cannot be served; the message is for users."""

    def __init__(self, message: str, status: str = "invalid"):
        if status not in REQUEST_STATUSES:
            raise ValueError(f"PodError status {status!r}: one of {', '.join(REQUEST_STATUSES)}")
        super().__init__(message)
        self.status = status


class ContainerError(Exception):
    """A container of a pod cannot be created (its waiting reason and message)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class SandboxError(Exception):
    """The pod's sandbox cannot be made (reported as FailedCreatePodSandBox)."""
