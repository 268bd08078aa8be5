"""Image names as podnet keeps and compares them (pure): the node's image store files images
under these names, its Node status reports them, and the scheduler's ImageLocality matches pod
images against them."""


def normalize(name: str) -> str:
    """busybox -> busybox:latest; docker.io/library/busybox -> busybox:latest."""
    name = name.strip()
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    last = name.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        name += ":latest"
    return name
