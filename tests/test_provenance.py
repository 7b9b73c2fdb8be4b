"""convgpu.core.provenance.source_hash against a hand computation, with and without git."""
import hashlib
import shutil
import subprocess

import pytest

from convgpu.core import provenance


def _tree(root):
    (root / "kernels" / "sub").mkdir(parents=True)
    (root / "kernels" / "__pycache__").mkdir()
    (root / "ops").mkdir()
    (root / "kernels" / "b.cu").write_bytes(b"__global__ void k() {}\n")
    (root / "kernels" / "sub" / "a.cuh").write_bytes(b"#pragma once\n")
    (root / "kernels" / "x.h").write_bytes(b"int x;")
    (root / "kernels" / "__pycache__" / "m.py").write_bytes(b"stale")
    (root / "kernels" / "notes.txt").write_bytes(b"not a source")
    (root / "ops" / "conv.py").write_bytes(b"def conv(): pass\n")
    (root / "python.py").write_bytes(b"outside kernels/ and ops/")


def _by_hand(root, paths):
    h = hashlib.sha256()
    for p in paths:                   # already in sorted POSIX order
        h.update(p.encode() + b"\0" + (root / p).read_bytes() + b"\0")
    return h.hexdigest()


def test_source_hash_without_git(tmp_path):
    _tree(tmp_path)
    want = _by_hand(tmp_path, ["kernels/b.cu", "kernels/sub/a.cuh", "kernels/x.h",
                               "ops/conv.py"])
    assert provenance.source_hash(tmp_path) == want
    # a content change, a new source file and a rename each change it
    (tmp_path / "ops" / "conv.py").write_bytes(b"def conv(): return 1\n")
    assert provenance.source_hash(tmp_path) != want
    # a file that is not a source (suffix, __pycache__) does not
    before = provenance.source_hash(tmp_path)
    (tmp_path / "kernels" / "more.txt").write_bytes(b"x")
    (tmp_path / "kernels" / "__pycache__" / "n.py").write_bytes(b"y")
    assert provenance.source_hash(tmp_path) == before


def test_source_hash_reads_tracked_files_with_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    _tree(tmp_path)
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True,
                                    capture_output=True)
    run("init", "-q")
    run("add", "kernels/b.cu", "kernels/sub/a.cuh", "ops/conv.py")
    # untracked kernels/x.h is left out where git can say what is tracked
    assert provenance.source_hash(tmp_path) == _by_hand(
        tmp_path, ["kernels/b.cu", "kernels/sub/a.cuh", "ops/conv.py"])


def test_source_hash_of_this_checkout_is_stable():
    h = provenance.source_hash()
    assert len(h) == 64 and h == provenance.source_hash()
    files = provenance.source_files()
    assert files == sorted(files) and "ops/_registry.py" in files
    assert all(f.split("/")[0] in ("kernels", "ops") for f in files)
