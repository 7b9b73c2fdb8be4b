"""The tuning cache on disk (ops/_registry.py) and the cache folders that can't be planted
(convgpu.core.cachedir, the host emulation's build cache), with a fake device and fake timings:
no GPU needed."""
import json
import os
import stat

import pytest

from convgpu.core import cachedir
from convgpu.ops import _registry as R

IDENT = {"device_id": 0, "device": "NVIDIA Fake 80GB", "driver": 13000, "runtime": 13000,
         "convgpu": "0.1.0", "cupy": "13.6", "numba": None, "numba-cuda": None,
         "numpy": "2.0", "source_hash": "abc"}


@pytest.fixture
def fake_device(monkeypatch, tmp_path):
    """A device identity, a private cache root, timings by algo name; records each timing."""
    monkeypatch.setenv("CONVGPU_TUNE_CACHE", "on")
    monkeypatch.setenv("CONVGPU_CACHE", str(tmp_path / "cache"))
    ident = dict(IDENT)
    monkeypatch.setattr(R, "_device_identity", lambda: dict(ident))
    monkeypatch.setattr(R, "_STORES", {})
    monkeypatch.setattr(R, "_CHOICE", {})
    times = {"slow": 3.0, "fast": 1.0, "mid": 2.0}
    timed = []

    def time_once(impl, args, arrays):
        timed.append(impl.algo)
        return times[impl.algo]
    monkeypatch.setattr(R, "_time_once", time_once)
    return ident, times, timed


def cands():
    return [R.Impl("conv2d", "cuda", a, "x:y", _fn=lambda *a: None)
            for a in ("slow", "fast", "mid")]


def key(n=8):
    return ("conv2d", "auto", "auto", ("ConvArgs", n, 3, 32, 32))


def fresh_process(monkeypatch):
    """What a new process sees: empty in-memory caches."""
    monkeypatch.setattr(R, "_STORES", {})
    monkeypatch.setattr(R, "_CHOICE", {})


def test_choice_is_persisted_and_reused_by_the_next_process(fake_device, monkeypatch, tmp_path):
    ident, times, timed = fake_device
    assert R._tuned(key(), cands(), None, ()).algo == "fast"
    assert timed == ["slow", "fast", "mid"]
    path = tmp_path / "cache" / "tune" / "NVIDIA_Fake_80GB.json"
    doc = json.loads(path.read_text())
    assert doc["choices"] == {repr(key()): "fast"}
    assert doc["identity"]["source_hash"] == "abc" and "device_id" not in doc["identity"]
    fresh_process(monkeypatch)
    times["mid"] = 0.1                     # would win if re-timed: the cache answers instead
    assert R._tuned(key(), cands(), None, ()).algo == "fast"
    assert timed == ["slow", "fast", "mid"]
    assert R._tuned(key(16), cands(), None, ()).algo == "mid"   # another shape is timed
    assert timed[3:] == ["slow", "fast", "mid"]
    assert set(json.loads(path.read_text())["choices"]) == {repr(key()), repr(key(16))}


@pytest.mark.parametrize("field", ["source_hash", "driver", "cupy", "device"])
def test_a_changed_kernel_driver_library_or_device_invalidates_it(fake_device, monkeypatch,
                                                                  field):
    ident, times, timed = fake_device
    R._tuned(key(), cands(), None, ())
    fresh_process(monkeypatch)
    ident[field] = ident[field] + "x" if isinstance(ident[field], str) else ident[field] + 1
    times["mid"] = 0.1
    assert R._tuned(key(), cands(), None, ()).algo == "mid"
    assert len(timed) == 6


@pytest.mark.parametrize("content", ["{not json", "[]", '{"identity": 1}',
                                     'null', '{"identity": %s, "choices": {"k": 3}}'])
def test_an_entry_that_fails_to_parse_or_validate_is_rebuilt(fake_device, monkeypatch,
                                                             tmp_path, content):
    ident, times, timed = fake_device
    R._tuned(key(), cands(), None, ())
    path = tmp_path / "cache" / "tune" / "NVIDIA_Fake_80GB.json"
    stored = {k: v for k, v in ident.items() if k != "device_id"}
    path.write_text(content.replace("%s", json.dumps(stored)) if "%s" in content else content)
    fresh_process(monkeypatch)
    assert R._tuned(key(), cands(), None, ()).algo == "fast"
    assert len(timed) == 6                                      # re-timed, not trusted
    assert json.loads(path.read_text())["choices"] == {repr(key()): "fast"}


def test_a_stored_algo_that_is_not_a_candidate_is_retimed(fake_device, monkeypatch, tmp_path):
    ident, times, timed = fake_device
    R._tuned(key(), cands(), None, ())
    path = tmp_path / "cache" / "tune" / "NVIDIA_Fake_80GB.json"
    doc = json.loads(path.read_text())
    doc["choices"][repr(key())] = "winograd_gone"
    path.write_text(json.dumps(doc))
    fresh_process(monkeypatch)
    assert R._tuned(key(), cands(), None, ()).algo == "fast"
    assert len(timed) == 6


def test_off_keeps_choices_in_memory(fake_device, monkeypatch, tmp_path):
    monkeypatch.setenv("CONVGPU_TUNE_CACHE", "off")
    assert R._tuned(key(), cands(), None, ()).algo == "fast"
    assert not (tmp_path / "cache").exists()


def test_cache_folders_are_private(fake_device, tmp_path):
    R._tuned(key(), cands(), None, ())
    for d in (tmp_path / "cache", tmp_path / "cache" / "tune"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert os.stat(d).st_uid == os.getuid()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_planted_writable_tune_folder_is_refused_in_one_line(fake_device, tmp_path, mode):
    ident, times, timed = fake_device
    planted = tmp_path / "cache" / "tune"
    planted.mkdir(parents=True)
    os.chmod(tmp_path / "cache", 0o700)
    os.chmod(planted, mode)
    (planted / "NVIDIA_Fake_80GB.json").write_text(json.dumps(
        {"identity": {k: v for k, v in ident.items() if k != "device_id"},
         "choices": {repr(key()): "slow"}}))
    with pytest.warns(UserWarning, match=f"cache folder {planted} is writable by others") as w:
        assert R._tuned(key(), cands(), None, ()).algo == "fast"    # timed, not read
    assert len(w) == 1 and "\n" not in str(w[0].message)
    assert len(timed) == 3


# ----------------------------------------------------------------------------------------
# the folders themselves


def test_private_dir_creates_0700_and_checks_each_level(tmp_path):
    d = cachedir.private_dir(str(tmp_path / "root"), "a", "b")
    for p in (tmp_path / "root", tmp_path / "root" / "a", tmp_path / "root" / "a" / "b"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    assert d == str(tmp_path / "root" / "a" / "b")
    os.chmod(tmp_path / "root" / "a", 0o757)
    with pytest.raises(cachedir.UnsafeCacheDir, match=f"{tmp_path / 'root' / 'a'} is writable"):
        cachedir.private_dir(str(tmp_path / "root"), "a", "b")


def test_check_private_refuses_another_owner_and_a_file(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    cachedir.check_private(str(d))
    monkeypatch.setattr(os, "getuid", lambda: os.stat(d).st_uid + 1)
    with pytest.raises(cachedir.UnsafeCacheDir, match="is owned by uid"):
        cachedir.check_private(str(d))
    monkeypatch.undo()
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(cachedir.UnsafeCacheDir, match="not a directory"):
        cachedir.check_private(str(f))


def test_an_unsafe_user_cache_is_refused_not_skipped_for_the_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVGPU_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "convgpu").mkdir(mode=0o700)
    os.chmod(tmp_path / "convgpu", 0o777)
    with pytest.raises(cachedir.UnsafeCacheDir, match=str(tmp_path / "convgpu")):
        cachedir.user_dir("cuda_host")


def test_the_fallback_under_tmp_is_private(tmp_path, monkeypatch):
    """A user cache that can't be created (a file in its way) falls back to
    /tmp/convgpu-<uid>, which is checked the same way."""
    monkeypatch.delenv("CONVGPU_CACHE", raising=False)
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "blocked"))
    monkeypatch.setattr(cachedir.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    d = cachedir.user_dir("cuda_host")
    assert d == str(tmp_path / "tmp" / f"convgpu-{os.getuid()}" / "cuda_host")
    planted = tmp_path / "tmp" / f"convgpu-{os.getuid()}"
    os.chmod(planted, 0o777)                     # another user's plant, as far as we can
    with pytest.raises(cachedir.UnsafeCacheDir, match=str(planted)):
        cachedir.user_dir("cuda_host")


# ----------------------------------------------------------------------------------------
# the host emulation's build cache


def test_host_emulation_refuses_a_planted_build_folder_and_rebuilds_a_bad_entry(tmp_path,
                                                                              monkeypatch):
    from convgpu.kernels.cuda.emulator import cuda_host
    if not cuda_host.available():
        pytest.skip(f"no {cuda_host.CXX}: the host emulation cannot build here")
    monkeypatch.setenv("CONVGPU_CACHE", str(tmp_path / "c"))
    src = "__global__ void one(float *y) { y[threadIdx.x] = 1.0f; }\n"
    import numpy as np
    cuda_host.module_from_source(src, ["one"])["one"]((1,), (4,), (y := np.zeros(4, np.float32),))
    np.testing.assert_array_equal(y, 1)
    build = tmp_path / "c" / "cuda_host"
    assert stat.S_IMODE(os.stat(build).st_mode) == 0o700
    (so,) = [p for p in build.iterdir() if p.suffix == ".so"]
    bad = build / "bad"                          # a truncated (or altered) library, put in
    bad.write_bytes(so.read_bytes()[:100])       # place by rename: the loaded one is mapped
    os.replace(bad, so)
    cuda_host.module_from_source(src, ["one"])["one"]((1,), (4,), (y := np.zeros(4, np.float32),))
    np.testing.assert_array_equal(y, 1)          # rebuilt, not loaded
    assert so.stat().st_size > 100
    os.chmod(build, 0o777)
    with pytest.raises(RuntimeError, match=f"cache folder {build} is writable by others"):
        cuda_host.module_from_source(src, ["one"])


def test_source_hash_of_the_checkout_covers_its_tracked_kernels():
    from convgpu.core.provenance import source_files, source_hash
    rels = source_files()
    assert "kernels/cuda/conv_implicit.cu" in rels and "ops/_registry.py" in rels
    assert rels == sorted(rels) and all(r.startswith(("kernels/", "ops/")) for r in rels)
    assert len(source_hash()) == 64


def test_dispatch_on_the_device_goes_through_the_persisted_cache(fake_device, monkeypatch):
    """The whole path: dispatch -> select -> the store -> the autotuner, and a new process
    (empty in-memory choices) runs the stored choice without timing."""
    ident, times, timed = fake_device
    ran = []
    impls = [R.Impl("fake_op", "cuda", a, "x:y", _fn=lambda args, *arrays, a=a: ran.append(a))
             for a in ("slow", "fast", "mid")]
    monkeypatch.setitem(R._REGISTRY, "fake_op", impls)
    monkeypatch.setattr(R, "backend_unavailable", lambda b: None)
    R.dispatch("fake_op", (4, 5), "auto", "auto", True)
    assert timed == ["slow", "fast", "mid"] and ran == ["fast"]
    R.dispatch("fake_op", (4, 5), "auto", "auto", True)            # in memory: no store read
    assert ran == ["fast", "fast"] and len(timed) == 3
    fresh_process(monkeypatch)
    times["slow"] = 0.01
    R.dispatch("fake_op", (4, 5), "auto", "auto", True)
    assert ran[-1] == "fast" and len(timed) == 3
    assert R.autotune_cache() == {("fake_op", "auto", "auto", (4, 5)): "fast"}
