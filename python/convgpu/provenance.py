"""Where a result came from: the source hash of the kernels and the op layer.

`source_hash()` is sha256 over the files under kernels/ and ops/ ending in .py, .cu, .cuh
or .h, in sorted POSIX relative paths ("kernels/conv.cu", ...), each contributing
path + "\\0" + bytes + "\\0". A benchmark record and the tuning cache carry it, so a
changed kernel is told apart from the one that was measured.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from typing import List, Optional, Tuple

SUFFIXES = (".py", ".cu", ".cuh", ".h")
FOLDERS = ("kernels", "ops")


def _package_root() -> str:
    """The folder holding kernels/ and ops/ of the imported package: the checkout in an
    editable install, site-packages/convgpu in a wheel's."""
    import convgpu.kernels
    import convgpu.ops
    k = os.path.dirname(os.path.abspath(convgpu.kernels.__file__))
    o = os.path.dirname(os.path.abspath(convgpu.ops.__file__))
    if os.path.dirname(k) != os.path.dirname(o):
        raise RuntimeError(f"source_hash: kernels ({k}) and ops ({o}) are not side by side")
    return os.path.dirname(k)


def _tracked(root: str) -> Optional[List[str]]:
    """The files git tracks under kernels/ and ops/ when `root` is the top of a git
    checkout, else None (an installed copy, or no git)."""
    try:
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=20)
        if top.returncode or os.path.realpath(top.stdout.strip()) != os.path.realpath(root):
            return None
        r = subprocess.run(["git", "-C", root, "ls-files", "-z", "--", *FOLDERS],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode:
        return None
    return [p for p in r.stdout.decode().split("\0") if p]


def source_files(root: Optional[str] = None) -> List[Tuple[str, str]]:
    """[(POSIX relative path, absolute path)] of the hashed files, sorted by path: the
    files git tracks under root's kernels/ and ops/, or where root is not a checkout's top
    every such file on disk (__pycache__ left out). root defaults to the imported
    package's (_package_root)."""
    root = root if root is not None else _package_root()
    rel = _tracked(root)
    if rel is None:
        rel = []
        for folder in FOLDERS:
            for d, dirs, files in os.walk(os.path.join(root, folder)):
                dirs[:] = [x for x in dirs if x != "__pycache__"]
                rel += [os.path.relpath(os.path.join(d, f), root) for f in files]
    pairs = [(p.replace(os.sep, "/"), os.path.join(root, p)) for p in rel]
    return sorted((r, a) for r, a in pairs if r.endswith(SUFFIXES) and os.path.isfile(a))


def source_hash(root: Optional[str] = None) -> str:
    """sha256 (hex) over kernels/ and ops/: path + "\\0" + bytes + "\\0" per file, in sorted
    POSIX relative path order."""
    h = hashlib.sha256()
    for rel, full in source_files(root):
        h.update(rel.encode() + b"\0")
        with open(full, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()
