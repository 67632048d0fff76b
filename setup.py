"""Build and install mixfast: the Python package, its Triton kernels (as mixfast.kernels) and the
compiled extension mixfast._C (C++ CPU kernels always; CUDA kernels when torch is a CUDA build and
a CUDA toolkit is found).

Build isolation must be off, because the extension compiles against the installed torch:

    pip install --no-build-isolation -e .

Environment: MIXFAST_BUILD_CUDA=0|1 (skip / force the CUDA kernels; default: when possible),
TORCH_CUDA_ARCH_LIST (default: the visible GPUs', else "8.0;9.0"), MAX_JOBS (parallel compile
jobs), CUDA_HOME (the toolkit; found from nvcc when unset).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from setuptools import setup

try:
    import torch
except ImportError:
    torch = None

ROOT = os.path.dirname(os.path.abspath(__file__))
TORCH_INSTALL = "python -m pip install torch==2.14.1 torchvision==0.29.1"
DEFAULT_ARCH_LIST = "8.0;9.0"
BUILD_RECORD = "_C_build.json"  # written next to the built mixfast/_C*.so


def _load_cuda_home():
    """mixfast/_cuda_home.py by path: the package is not importable before it is built."""
    spec = importlib.util.spec_from_file_location(
        "_mixfast_cuda_home", os.path.join(ROOT, "mixfast", "_cuda_home.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


find_cuda_home = _load_cuda_home().find_cuda_home


def cuda_plan() -> tuple[bool, str]:
    """(build the CUDA kernels?, why), honouring MIXFAST_BUILD_CUDA=0|1."""
    wanted = os.environ.get("MIXFAST_BUILD_CUDA", "").strip()
    if wanted not in ("", "0", "1"):
        sys.exit(f"MIXFAST_BUILD_CUDA must be 0 (skip) or 1 (force), got {wanted!r}")
    if wanted == "0":
        return False, "MIXFAST_BUILD_CUDA=0"
    home = find_cuda_home() if torch.version.cuda else None
    reason = (
        "torch is a CPU-only build" if not torch.version.cuda else "no CUDA toolkit (nvcc) found"
    )
    if home is None:
        if wanted == "1":
            sys.exit(f"MIXFAST_BUILD_CUDA=1 but {reason}; set CUDA_HOME to the toolkit")
        return False, reason
    os.environ["CUDA_HOME"] = home  # torch.utils.cpp_extension reads it when imported
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = visible_arch_list() or DEFAULT_ARCH_LIST
    return True, f"sm {os.environ['TORCH_CUDA_ARCH_LIST']}, CUDA_HOME={home}"


def visible_arch_list() -> str:
    if not torch.cuda.is_available():
        return ""
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))


def check_torch() -> None:
    if torch is None:
        sys.exit(
            "mixfast compiles its extension against the installed PyTorch, and none is installed."
            f" Install it with\n    {TORCH_INSTALL}\nthen run this build again."
        )
    if "pip-build-env" in torch.__file__:
        sys.exit(
            "mixfast must be built against the torch you run, not a temporary copy: "
            "pip install --no-build-isolation -e ."
        )


def extension(with_cuda: bool):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cuda_version = torch.version.cuda if with_cuda else "none"
    defines = [
        f"-DMIXFAST_TORCH_VERSION={torch.__version__}",
        f"-DMIXFAST_CUDA_VERSION={cuda_version}",
        f"-DMIXFAST_WITH_CUDA={int(with_cuda)}",
    ]
    cxx = ["-O3", "-fopenmp", *defines]
    sources = ["csrc/masking.cpp"]
    kwargs = {"include_dirs": [os.path.join(ROOT, "csrc")], "extra_link_args": ["-fopenmp"]}
    if not with_cuda:
        return CppExtension("mixfast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    nvcc = ["-O3", "-lineinfo", *defines]
    return CUDAExtension(
        "mixfast._C",
        [*sources, "csrc/masking_cuda.cu"],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        **kwargs,
    )


def build_command(with_cuda: bool, cuda_reason: str):
    """build_ext that prints what it builds, then records next to mixfast._C what it was built
    against (mixfast/_extension.py checks the record before importing the library)."""
    from torch.utils.cpp_extension import BuildExtension

    kernels = (
        f"C++ CPU + CUDA kernels ({cuda_reason})"
        if with_cuda
        else f"C++ CPU kernels only; no CUDA kernels: {cuda_reason}"
    )
    record = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "cuda_kernels": with_cuda,
        "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
    }

    class BuildWithRecord(BuildExtension):
        def run(self) -> None:
            print(f"mixfast: building mixfast._C against torch {torch.__version__}: {kernels}")
            super().run()
            ext_dir = os.path.dirname(self.get_ext_fullpath("mixfast._C"))
            with open(os.path.join(ext_dir, BUILD_RECORD), "w") as f:
                json.dump(record, f, indent=1)

    return BuildWithRecord.with_options(use_ninja=True)


def main() -> None:
    check_torch()
    with_cuda, cuda_reason = cuda_plan()  # sets CUDA_HOME before cpp_extension is imported
    setup(
        name="mixfast",
        version="0.1.0",
        description="MixTraining (MAE self-supervision + supervised learning) for ViTs, with kernels",
        python_requires=">=3.10",
        packages=[
            "mixfast",
            "mixfast.ops",
            "mixfast.data",
            "mixfast.model",
            "mixfast.train",
            "mixfast.cli",
            "mixfast.kernels",
            "mixfast.benchmarks",
        ],
        package_dir={
            "mixfast": "mixfast",
            "mixfast.kernels": "kernels",
            "mixfast.benchmarks": "benchmarks",
        },
        ext_modules=[extension(with_cuda)],
        cmdclass={"build_ext": build_command(with_cuda, cuda_reason)},
        install_requires=[
            "torch",
            "torchvision",
            "triton",
            "timm",
            "numpy",
            "ninja",
            "tqdm",
            "matplotlib",
        ],
        extras_require={
            "hf": ["datasets"],  # hfds/ sources
            "tensorboard": ["tensorboard"],  # train --tensorboard
            "test": ["pytest", "pytest-benchmark", "ruff", "datasets", "tensorboard"],
        },
        entry_points={"console_scripts": ["mixfast=mixfast.cli:main"]},
        zip_safe=False,
    )


if __name__ == "__main__":  # also how pip's setuptools backend runs this file
    main()
