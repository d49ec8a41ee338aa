"""The version files' lifecycle: creating one, opening (or replacing) it, sweeping abandoned ones.

The layout and the mapping are in :mod:`.versionfile`.
"""

from __future__ import annotations

import os
import time

from .versionfile import (
    H_CREATED,
    H_EPOCH,
    H_LAYOUT,
    H_MAGIC,
    H_PIDS,
    H_RETIRED,
    HEADER,
    LAYOUT,
    MAGIC,
    PIDS,
    SIZE,
    MappedFile,
    alive,
    new_epoch,
)

__all__ = ["create", "open_file", "sweep"]


def create(path: str, replace: bool) -> None:
    """Write a new empty file at *path* (a new epoch); keep another's unless *replace*."""
    sweep(os.path.dirname(path))
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        m = MappedFile(fd, (0, 0))
        hdr = m.hdr
        hdr[H_LAYOUT] = LAYOUT
        hdr[H_EPOCH] = new_epoch()
        hdr[H_CREATED] = time.time_ns()
        hdr[H_MAGIC] = MAGIC
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process created it first: use theirs
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def open_file(path: str) -> MappedFile:
    """Map the version file at *path*, creating it, or replacing one that is truncated, of
    another layout or retired.

    Raises:
        OSError: the file cannot be created or opened, or keeps changing under us.
        PermissionError: the file belongs to another user.
    """
    for _ in range(8):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            create(path, replace=False)
            continue
        st = os.fstat(fd)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            os.close(fd)
            raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us")
        if st.st_size != SIZE:
            os.close(fd)
            create(path, replace=True)  # truncated, or another layout: a new epoch
            continue
        m = MappedFile(fd, (st.st_dev, st.st_ino))
        hdr = m.hdr
        if hdr[H_MAGIC] != MAGIC or hdr[H_LAYOUT] != LAYOUT or hdr[H_RETIRED]:
            m.close()
            create(path, replace=True)
            continue
        return m
    raise OSError(f"could not open a stable version file at {path}")


_swept: set[str] = set()


def sweep(directory: str) -> None:
    """Delete this user's version files that no live process uses (once per directory).

    Files of processes killed with SIGKILL are left behind; with a fresh prefix per test or
    per deployment they would pile up. A file is deleted only when every process recorded
    in it is dead and it was last modified over a minute ago (so none is being created);
    deleting a file in use would be safe anyway, only slower.
    """
    if directory in _swept:
        return
    _swept.add(directory)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    suffix = f"-{uid}.ver"
    old = time.time() - 60
    try:
        names = [n for n in os.listdir(directory) if n.startswith("yokedcache-v1-")]
    except OSError:
        return
    for name in names:
        if not name.endswith(suffix):
            continue
        path = os.path.join(directory, name)
        try:
            if os.stat(path).st_mtime > old:
                continue
            with open(path, "rb") as f:
                raw = f.read(HEADER)
        except OSError:
            continue
        if len(raw) < HEADER:
            continue
        words = memoryview(raw).cast("Q")
        if words[H_MAGIC] != MAGIC:
            continue
        if any(p and alive(p) for p in words[H_PIDS : H_PIDS + PIDS]):
            continue
        try:
            os.unlink(path)
        except OSError:
            pass
