"""setup.py's CUDA toolkit discovery (no compiling here) and the installed package layout."""

from __future__ import annotations

import importlib.util
import pathlib
import stat

import pytest

from mixfast import _cuda_home

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("mixfast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() only runs under __main__
    return module


def _fake_toolkit(root: pathlib.Path) -> pathlib.Path:
    home = root / "cuda-13.0"
    (home / "bin").mkdir(parents=True)
    (home / "lib64").mkdir()
    (home / "lib64" / "libcudart.so").write_bytes(b"\x7fELF\0")
    _executable(home / "bin" / "nvcc", b"\x7fELF\0binary")
    return home


def _executable(path: pathlib.Path, content: bytes) -> None:
    path.write_bytes(content)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_toolkit_behind_a_wrapper_script(setup_module, tmp_path):
    home = _fake_toolkit(tmp_path)
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    _executable(wrapper, f'#!/bin/sh\nexec {home}/bin/nvcc "$@"\n'.encode())
    assert _cuda_home._toolkit_of_nvcc(str(wrapper)) == str(home)


def test_toolkit_behind_a_symlink(setup_module, tmp_path):
    home = _fake_toolkit(tmp_path)
    link = tmp_path / "nvcc"
    link.symlink_to(home / "bin" / "nvcc")
    assert _cuda_home._toolkit_of_nvcc(str(link)) == str(home)


def test_no_toolkit_for_a_stray_binary(setup_module, tmp_path):
    stray = tmp_path / "bin" / "nvcc"
    stray.parent.mkdir()
    _executable(stray, b"\x7fELF\0binary")
    assert _cuda_home._toolkit_of_nvcc(str(stray)) is None


def test_find_cuda_home_prefers_a_valid_env(setup_module, tmp_path, monkeypatch):
    home = _fake_toolkit(tmp_path)
    monkeypatch.setenv("CUDA_HOME", str(home))
    assert _cuda_home.find_cuda_home() == str(home)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "missing"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "cuda-13.0" / "bin"))
    assert _cuda_home.find_cuda_home() == str(home)


def test_build_cuda_env_values(setup_module, monkeypatch):
    monkeypatch.setenv("MIXFAST_BUILD_CUDA", "0")
    assert setup_module.cuda_plan() == (False, "MIXFAST_BUILD_CUDA=0")
    monkeypatch.setenv("MIXFAST_BUILD_CUDA", "yes")
    with pytest.raises(SystemExit, match="MIXFAST_BUILD_CUDA must be 0"):
        setup_module.cuda_plan()


def test_kernels_is_a_subpackage():
    import mixfast.kernels

    assert mixfast.kernels.__name__ == "mixfast.kernels"
    assert pathlib.Path(mixfast.kernels.__file__).parent.name == "kernels"
