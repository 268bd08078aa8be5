"""The image's user and group names (pure): the `User` of an image config and the lines of its
/etc/passwd and /etc/group. Both come from the image, so both are untrusted: anything that is
not a well-formed entry is skipped, as glibc's files backend skips it, and ids are bounded."""

MAX_ID = 2**32 - 2   # (uid_t)-1 means "no change" to the kernel: never a valid id
DB_LIMIT = 2**20     # bytes of /etc/passwd or /etc/group we are willing to read


class UserError(ValueError):
    pass


def numeric_id(text: str) -> int | None:
    """'1000' -> 1000; a name -> None; an out-of-range number -> UserError."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > 10 or int(text) > MAX_ID:
        raise UserError(f"id {text} is out of range (0-{MAX_ID})")
    return int(text)


def split_user(spec: str) -> tuple[str, str]:
    """An image config's User: 'name', 'uid', 'name:group', 'uid:gid' -> (user, group)."""
    user, _, group = spec.partition(":")
    if not user or "\n" in spec or "\0" in spec:
        raise UserError(f"image user {spec!r} is not USER[:GROUP]")
    return user, group


def find_id(data: bytes, name: str) -> int | None:
    """The id (third field) of name in passwd or group file content; None when absent."""
    key = name.encode("utf-8", "surrogateescape")
    for line in data.split(b"\n"):
        fields = line.rstrip(b"\r").split(b":")
        if len(fields) < 3 or fields[0] != key:
            continue
        try:
            value = numeric_id(fields[2].decode("ascii"))
        except (UnicodeDecodeError, UserError):
            continue
        if value is not None:
            return value
    return None
