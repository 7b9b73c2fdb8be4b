"""Where a measurement came from, without git: the commit when git can say it, and a hash of
the kernel and op sources read at run time (the lent GPU's copy of the tree has no .git).

`source_hash` is sha256 over the tracked files under kernels/ and ops/ whose names end in
.py, .cu, .cuh or .h, in sorted order of their POSIX paths relative to the repository root,
each contributing ``path + "\\0" + content + "\\0"``. Without git (or outside a checkout)
the files are those under kernels/ and ops/ with those suffixes, __pycache__ excluded. The
tuning cache keys its entries by the same hash, so a changed kernel invalidates them.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import List, Optional

SOURCE_DIRS = ("kernels", "ops")
SOURCE_SUFFIXES = (".py", ".cu", ".cuh", ".h")


def source_root() -> Path:
    """The folder holding kernels/ and ops/: the repository root of a checkout (editable
    install), else the installed package, which holds them under the same names."""
    here = Path(__file__).resolve().parent.parent      # convgpu/core -> convgpu
    for cand in (here.parent.parent, here):
        if all((cand / d).is_dir() for d in SOURCE_DIRS):
            return cand
    raise FileNotFoundError(f"no kernels/ and ops/ next to {here}")


def _git_files(root: Path) -> Optional[List[str]]:
    """The tracked paths under kernels/ and ops/, or None where git cannot say (no git, no
    .git: the device copy)."""
    if not (root / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", *SOURCE_DIRS],
                           capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return [p for p in r.stdout.decode().split("\0") if p]


def _walked_files(root: Path) -> List[str]:
    out = []
    for d in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / d):
            dirnames[:] = [n for n in dirnames if n != "__pycache__"]
            for f in filenames:
                out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return out


def source_files(root=None) -> List[str]:
    """The POSIX paths (relative to root) that source_hash reads, in the order it reads them."""
    root = Path(root) if root is not None else source_root()
    files = _git_files(root)
    if files is None:
        files = _walked_files(root)
    return sorted(p for p in files if p.endswith(SOURCE_SUFFIXES)
                  and "__pycache__" not in p.split("/") and (root / p).is_file())


def source_hash(root=None) -> str:
    """sha256 (hex) of the kernel and op sources: see the module docstring."""
    root = Path(root) if root is not None else source_root()
    h = hashlib.sha256()
    for p in source_files(root):
        h.update(p.encode() + b"\0" + (root / p).read_bytes() + b"\0")
    return h.hexdigest()


def commit(root=None) -> Optional[str]:
    """The checkout's commit (short), CONVGPU_COMMIT where the device copy has no git, or None."""
    env = os.environ.get("CONVGPU_COMMIT")
    if env:
        return env
    try:
        root = Path(root) if root is not None else source_root()
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"],
                           capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError, FileNotFoundError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None
