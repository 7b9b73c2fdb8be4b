"""The folders convgpu keeps its caches in, made so nobody else can plant an entry.

Both caches hold things we load and trust: the host emulation's compiled libraries (whose
names are hashes of public sources) and the tuning cache's choices. So every folder of
ours is created with mode 0700 and used only when it is a directory owned by this user
that neither group nor others can write; anything else is refused with one line naming
the folder (UnsafeCacheDir), never used and never silently replaced.
"""
from __future__ import annotations

import os
import stat
import tempfile


class UnsafeCacheDir(RuntimeError):
    """A cache folder that another user owns or that others may write."""


def cache_root() -> str:
    """CONVGPU_CACHE, else $XDG_CACHE_HOME/convgpu, else ~/.cache/convgpu."""
    return os.environ.get("CONVGPU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "convgpu")


def fallback_root() -> str:
    """Where caches go when the user cache directory cannot be created."""
    return os.path.join(tempfile.gettempdir(), f"convgpu-{os.getuid()}")


def check_private(path: str) -> None:
    """Raise UnsafeCacheDir unless `path` is a directory owned by this user and not
    writable by group or others."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheDir(f"cache folder {path} is not a directory: refusing to use it")
    if st.st_uid != os.getuid():
        raise UnsafeCacheDir(f"cache folder {path} is owned by uid {st.st_uid}, not by this "
                             f"user ({os.getuid()}): refusing to use it (remove it or set "
                             "CONVGPU_CACHE)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheDir(f"cache folder {path} is writable by others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}): refusing to use it (chmod 700 "
                             "it, or remove it)")


def private_dir(root: str, *parts: str) -> str:
    """root/parts..., each level from root down created with mode 0700 if missing and
    checked (check_private) whether new or found. OSError if it cannot be created."""
    path = root
    for level in (None,) + parts:
        if level is not None:
            path = os.path.join(path, level)
        try:
            os.makedirs(path, mode=0o700)
        except FileExistsError:
            pass
        check_private(path)
    return path


def user_dir(*parts: str) -> str:
    """A private folder under cache_root(), or under fallback_root() where the former
    cannot be created (a read-only home). An unsafe folder is refused, not skipped."""
    try:
        return private_dir(cache_root(), *parts)
    except UnsafeCacheDir:
        raise
    except OSError:
        if os.environ.get("CONVGPU_CACHE"):          # the user's own choice: say so
            raise
    return private_dir(fallback_root(), *parts)
