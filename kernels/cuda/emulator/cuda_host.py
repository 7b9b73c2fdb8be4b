"""Runs the CUDA C kernels (kernels/cuda/*.cu, kernels/dev/*.cu) on the CPU, thread by
thread: the host-emulation tier of the tests, for machines without a GPU.

Each .cu is compiled by g++ with cuda_host.h (beside this module) in front (fibers for the
threads of a block, switched at barriers; warp collectives and cp.async emulated; shared
memory poisoned per block), every name expression of kernels/cuda/sources.py instantiated, and loaded through
ctypes. `get_function(file, expr)` returns a callable with CuPy's RawKernel call
convention, `kernel(grid, block, args)`, taking NumPy arrays where CuPy takes device arrays;
kernels/cuda/module.get_function hands these out when CONVGPU_CUDA_HOST=1, so the launchers
in kernels/cuda/ run unchanged on NumPy arrays.

Every launch checks each argument against the kernel's C parameter type (a numpy scalar of
the parameter's exact size and kind; an array whose element size and kind match the
pointee), which CuPy does not: it would pack a mismatched scalar silently; and the grid and
block against the device's launch limits. Arrays are copied into buffers that abut an
inaccessible page (the end of the array, or with order("reverse") its start), so an access
past the array stops the process with a message naming the kernel, block and thread, as do
a fixed-size array indexed out of bounds and a vector access (float4, double2) at an
address not aligned to its size, which faults on a GPU (-fsanitize=bounds,alignment);
writes into the few alignment bytes before the guard page are caught by comparing them
afterwards. `order("reverse")` also runs threads and blocks in reverse order, lets one
warp at a time run on to its next __syncthreads (forward order keeps warps in lockstep at
every warp collective) and lands each cp.async copy at once (forward order: at the wait
that covers it, the latest moment allowed): a kernel whose output changes with the order
has a race. `order("shuffle")` draws thread, block and warp order and each copy's moment
at random (seeded).

This is emulation, not validation: timing, memory-model subtleties beyond barriers, and the
hardware's own arithmetic (FTZ, FMA contraction) are not reproduced.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import mmap
import os
import shutil
import subprocess
import tempfile
from typing import Dict, Optional, Tuple

import numpy as np

from convgpu.core.cachedir import user_dir
from convgpu.kernels.cuda import sources

CXX = os.environ.get("CXX", "g++")
# -fno-weak / -fno-gnu-unique: each library keeps its own copy of the emulator's state;
# -ftrivial-auto-var-init=pattern: uninitialised locals are a byte pattern, not zero
CXXFLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-fno-strict-aliasing", "-fno-gnu-unique",
            "-fno-weak", "-ftrivial-auto-var-init=pattern", "-fsanitize=bounds,alignment",
            "-fsanitize-undefined-trap-on-error", "-DCONVGPU_HOST=1", "-w")
HEADER = "cuda_host.h"
HEADER_DIR = os.path.dirname(os.path.abspath(__file__))
KIND_INT, KIND_FLOAT, KIND_BOOL, KIND_PTR_INT, KIND_PTR_FLOAT, KIND_PTR_OTHER = range(6)
CONST = 8                      # added to a pointer's kind when the pointee is const

ORDERS = ("forward", "reverse", "shuffle")
_state = {"order": 0}


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """A C++ compiler to build the emulation with (looked up once: dispatch asks on every
    call, and the PATH search was two thirds of an emulated relu's host time)."""
    return shutil.which(CXX) is not None


@contextlib.contextmanager
def order(which: str):
    """Run every launch inside with threads and blocks in 'forward' or 'reverse' order, or
    'shuffle'd (seeded: a new thread permutation between every two barriers); see the
    module's docstring for what else each order changes (warps, cp.async)."""
    if which not in ORDERS:
        raise ValueError(f"order is one of {', '.join(ORDERS)}; got {which!r}")
    old = _state["order"]
    _state["order"] = ORDERS.index(which)
    try:
        yield
    finally:
        _state["order"] = old


def _cache_dir() -> str:
    """Where built libraries are kept (keyed by a hash of sources and flags): cuda_host under
    CONVGPU_CACHE, else $XDG_CACHE_HOME/convgpu or ~/.cache/convgpu, else
    /tmp/convgpu-<uid>; created 0700 and refused unless ours alone (convgpu.core.cachedir):
    we load what is in it."""
    try:
        return user_dir("cuda_host")
    except OSError as e:
        raise RuntimeError(f"no folder for the host-emulation builds ({e}); set "
                           "CONVGPU_CACHE") from None


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _cached_library(so: str) -> bool:
    """The cached build is used only when its recorded digest matches its bytes: a
    truncated or altered library is rebuilt, never loaded."""
    try:
        with open(so + ".sha256") as f:
            return f.read().strip() == _digest(so)
    except OSError:
        return False


def _translation_unit(include: str, exprs) -> str:
    lines = [f'#include "{HEADER}"', f'#include "{include}"',
             "static const cuda_host::Entry entries[] = {"]
    lines += [f'    cuda_host::entry("{e}", &{e}),' for e in exprs]
    lines += ["};", "CUDA_HOST_TABLE(entries)", ""]
    return "\n".join(lines)


def _includes() -> Dict[str, str]:
    return {n: open(os.path.join(d, n)).read() for d in sources.source_dirs() + (HEADER_DIR,)
            for n in sorted(os.listdir(d)) if n.endswith((".cu", ".cuh", ".h"))}


def _build(label: str, include: str, exprs, extra_source: Optional[str] = None):
    """Compile (or find in the cache) and load one module; returns (library, signatures)."""
    tu = _translation_unit(include, exprs)
    h = hashlib.sha256()
    for part in (tu, extra_source or "", " ".join(CXXFLAGS), *sorted(_includes().items())):
        h.update(repr(part).encode())
    so = os.path.join(_cache_dir(), f"{label.replace('.', '_')}-{h.hexdigest()[:16]}.so")
    if not _cached_library(so):
        with tempfile.TemporaryDirectory() as tmp:
            if extra_source is not None:
                with open(os.path.join(tmp, include), "w") as f:
                    f.write(extra_source)
            src = os.path.join(tmp, "tu.cpp")
            with open(src, "w") as f:
                f.write(tu)
            out = os.path.join(tmp, "lib.so")
            cmd = [CXX, *CXXFLAGS, f"-I{tmp}", f"-I{HEADER_DIR}",
                   *(f"-I{d}" for d in sources.source_dirs()), src, "-o", out]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"host build of {label} failed:\n{' '.join(cmd)}\n{r.stderr}")
            tmp_so = so + f".{os.getpid()}"
            shutil.copy(out, tmp_so)
            with open(tmp_so + ".sha256", "w") as f:
                f.write(_digest(tmp_so))
            os.replace(tmp_so, so)
            os.replace(tmp_so + ".sha256", so + ".sha256")
    lib = ctypes.CDLL(so, mode=ctypes.RTLD_LOCAL)
    _register_shared(lib, so)
    lib.cuda_host_name.restype = ctypes.c_char_p
    lib.cuda_host_launch.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint),
                                     ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.c_longlong, ctypes.c_int, ctypes.c_char_p,
                                     ctypes.c_int]
    table = {}
    kind = (ctypes.c_int * 32)()
    size = (ctypes.c_int * 32)()
    for i in range(lib.cuda_host_count()):
        n = lib.cuda_host_signature(i, kind, size)
        table[lib.cuda_host_name(i).decode()] = HostKernel(
            lib, i, lib.cuda_host_name(i).decode(), tuple(kind[:n]), tuple(size[:n]))
    return table


NM = os.environ.get("NM", "nm")


def _register_shared(lib, so: str):
    """Tell the library where its __shared__ variables are, to poison them per block. They
    are the function-local statics (mangled _ZZ...): kernels have no other statics, and
    the emulator keeps none."""
    r = subprocess.run([NM, "-S", "--defined-only", so], capture_output=True, text=True,
                       check=True)
    anchor, regions = None, []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == "cuda_host_anchor":
            anchor = int(parts[0], 16)
        elif len(parts) == 4 and parts[3].startswith("_ZZ") and parts[2] in "bBdDvVu":
            regions.append((int(parts[0], 16), int(parts[1], 16)))
    if anchor is None:
        raise RuntimeError(f"{so}: no cuda_host_anchor symbol")
    n = len(regions)
    lib.cuda_host_set_shared(ctypes.c_longlong(anchor),
                             (ctypes.c_longlong * max(n, 1))(*[o for o, _ in regions]),
                             (ctypes.c_longlong * max(n, 1))(*[z for _, z in regions]),
                             ctypes.c_int(n))
    lib.shared_regions = regions


@functools.lru_cache(maxsize=None)
def _library(file: str):
    return _build(file, file, sources.NAME_EXPRESSIONS[file])


def get_function(file: str, expr: str) -> "HostKernel":
    table = _library(file)
    if expr not in table:
        raise KeyError(f"{expr} is not among the name expressions of {file}")
    return table[expr]


def module_from_source(source: str, name_expressions) -> Dict[str, "HostKernel"]:
    """Kernels of a source text (it may include common.cuh): {name expression: kernel}."""
    h = hashlib.sha256(source.encode()).hexdigest()[:12]
    return _build(f"src-{h}", f"src_{h}.cu", tuple(name_expressions), extra_source=source)


# ----------------------------------------------------------------------------------------
# guard-paged buffers

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE = mmap.PAGESIZE
ALIGN = 16                     # the widest vector access (float4 / double2)
SLACK_BYTE = 0xA5


class _Guarded:
    """A copy of `arr` in fresh pages, against a PROT_NONE page at its end (or start)."""

    def __init__(self, arr: np.ndarray, at_start: bool):
        self.arr = arr
        n = arr.nbytes
        body = -(-max(n, 1) // PAGE) * PAGE
        self.total = body + 2 * PAGE
        base = _libc.mmap(None, self.total, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise MemoryError("mmap failed")
        self.base = base
        _libc.mprotect(base, PAGE, 0)
        _libc.mprotect(base + PAGE + body, PAGE, 0)
        self.lo, self.hi = base + PAGE, base + PAGE + body     # the accessible region
        self.addr = self.lo if at_start else (self.hi - n) // ALIGN * ALIGN
        region = np.ctypeslib.as_array((ctypes.c_ubyte * body).from_address(self.lo))
        region[:] = SLACK_BYTE
        self.region = region
        self.view = np.ctypeslib.as_array(
            (ctypes.c_ubyte * n).from_address(self.addr)) if n else np.zeros(0, np.uint8)
        self.view[:] = arr.reshape(-1).view(np.uint8)
        self.off = self.addr - self.lo

    def slack_intact(self) -> bool:
        before = self.region[:self.off]
        after = self.region[self.off + self.arr.nbytes:]
        return bool(np.all(before == SLACK_BYTE) and np.all(after == SLACK_BYTE))

    def copy_back(self):
        self.arr.reshape(-1).view(np.uint8)[:] = self.view

    def unchanged(self) -> bool:
        return bool(np.array_equal(self.view, self.arr.reshape(-1).view(np.uint8)))

    def free(self):
        self.region = self.view = None
        _libc.munmap(self.base, self.total)


def _kind_of_dtype(dt: np.dtype) -> int:
    if dt.kind == "f":
        return KIND_FLOAT
    if dt.kind in "iu":
        return KIND_INT
    if dt.kind == "b":
        return KIND_BOOL
    return -1


# dynamic shared memory a launch may ask for without raising the function's attribute, and
# the most any block may have (sm_90's opt-in limit: 227 KiB)
DEFAULT_DYNAMIC_SHARED = 48 * 1024
MAX_SHARED_PER_BLOCK = 227 * 1024


class HostKernel:
    def __init__(self, lib, index, name, kinds, sizes):
        self.lib, self.index, self.name, self.kinds, self.sizes = lib, index, name, kinds, sizes
        # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (kernels/cuda/module.py sets it)
        self.max_dynamic_shared_size_bytes = DEFAULT_DYNAMIC_SHARED

    def _check(self, p: int, a):
        kind, size = self.kinds[p] & ~CONST, self.sizes[p]
        where = f"{self.name}: argument {p}"
        if kind >= KIND_PTR_INT:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise TypeError(f"{where}: array is not C-contiguous")
                want = {KIND_PTR_INT: KIND_INT, KIND_PTR_FLOAT: KIND_FLOAT}.get(kind)
                if a.itemsize != size or (want is not None and _kind_of_dtype(a.dtype) != want):
                    raise TypeError(f"{where}: array of {a.dtype} for a pointer to a "
                                    f"{size}-byte {'float' if want == KIND_FLOAT else 'integer'}")
                return
            if isinstance(a, np.generic) and np.dtype(type(a)).kind in "iu" and int(a) == 0:
                return                                        # a null pointer
            raise TypeError(f"{where}: a pointer parameter takes an array or 0, got {type(a)}")
        if not isinstance(a, np.generic):
            raise TypeError(f"{where}: pass a numpy scalar of the parameter's type, not "
                            f"{type(a).__name__} (CuPy would convert it to a 64-bit type)")
        if a.itemsize != size or _kind_of_dtype(np.dtype(type(a))) != kind:
            raise TypeError(f"{where}: {np.dtype(type(a))} for a {size}-byte "
                            f"{['integer', 'floating', 'bool'][kind]} parameter")

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        shared_mem = int(shared_mem)
        if not 0 <= shared_mem <= MAX_SHARED_PER_BLOCK:
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory "
                             f"(at most {MAX_SHARED_PER_BLOCK})")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory, past "
                             f"the function's limit of {self.max_dynamic_shared_size_bytes} "
                             "(raise it first: kernels/cuda/module.py set_max_dynamic_shared)")
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        # the launch limits of every GPU since sm_30: a launch past them fails on the device
        if not (1 <= grid[0] < 2 ** 31 and 1 <= grid[1] <= 65535 and 1 <= grid[2] <= 65535):
            raise ValueError(f"{self.name}: grid {grid} outside (2**31 - 1, 65535, 65535)")
        if not (1 <= block[0] <= 1024 and 1 <= block[1] <= 1024 and 1 <= block[2] <= 64
                and block[0] * block[1] * block[2] <= 1024):
            raise ValueError(f"{self.name}: block {block} outside the 1024-thread limits")
        if len(args) != len(self.kinds):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.kinds)} parameters")
        order_ = _state["order"]
        reverse = order_ == 1
        guards: Dict[Tuple[int, int], _Guarded] = {}
        keep, ptrs = [], []
        try:
            for p, a in enumerate(args):
                self._check(p, a)
                if isinstance(a, np.ndarray):
                    key = (a.ctypes.data, a.nbytes)
                    for (q, m), g in guards.items():
                        if key != (q, m) and q < key[0] + key[1] and key[0] < q + m:
                            raise ValueError(f"{self.name}: argument {p} partly overlaps another")
                    if key not in guards:
                        guards[key] = _Guarded(a, at_start=reverse)
                    value = ctypes.c_void_p(guards[key].addr)   # the pointer, passed by address
                elif self.kinds[p] & ~CONST >= KIND_PTR_INT:
                    value = ctypes.c_void_p(0)
                else:
                    value = ctypes.create_string_buffer(np.asarray(a).tobytes(), a.itemsize)
                keep.append(value)
                ptrs.append(ctypes.addressof(value))
            argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
            err = ctypes.create_string_buffer(512)
            rc = self.lib.cuda_host_launch(self.index, (ctypes.c_uint * 3)(*grid),
                                           (ctypes.c_uint * 3)(*block), argv, shared_mem, order_,
                                           err, 512)
            if rc:
                raise RuntimeError(f"host emulation: {err.value.decode()}")
            for p, a in enumerate(args):
                if not isinstance(a, np.ndarray):
                    continue
                g = guards[(a.ctypes.data, a.nbytes)]
                if not g.slack_intact():
                    raise RuntimeError(f"{self.name}: argument {p} was written outside its "
                                       f"{a.nbytes} bytes (within the alignment slack)")
                if self.kinds[p] & CONST:
                    if not g.unchanged():
                        raise RuntimeError(f"{self.name}: const argument {p} was modified")
            for g in guards.values():
                g.copy_back()
        finally:
            for g in guards.values():
                g.free()
