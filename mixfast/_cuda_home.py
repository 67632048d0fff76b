"""Where the CUDA toolkit is: used by setup.py (loaded by path, before mixfast is installed)
and by `mixfast info`, so both name the same folder. Follows links and wrapper scripts such as
`exec /usr/local/cuda-13.0/bin/nvcc "$@"` to the toolkit that holds nvcc and libcudart."""

from __future__ import annotations

import glob
import os
import re
import shutil


def _has_cudart(home: str) -> bool:
    return os.path.isfile(os.path.join(home, "bin", "nvcc")) and bool(
        glob.glob(os.path.join(home, "lib64", "libcudart*"))
        or glob.glob(os.path.join(home, "lib", "libcudart*"))
        or glob.glob(os.path.join(home, "targets", "*", "lib", "libcudart*"))
    )


def _toolkit_of_nvcc(nvcc: str, depth: int = 0) -> str | None:
    """The toolkit an nvcc belongs to, following links and wrapper scripts (`exec /x/bin/nvcc`)."""
    real = os.path.realpath(nvcc)
    home = os.path.dirname(os.path.dirname(real))
    if _has_cudart(home):
        return home
    if depth > 2 or not os.path.isfile(real) or os.path.getsize(real) > 65536:
        return None
    with open(real, "rb") as f:
        text = f.read()
    if b"\0" in text:  # a binary nvcc outside any toolkit
        return None
    for target in re.findall(r"(/[^\s'\"`;|&<>]*/bin/nvcc)\b", text.decode(errors="ignore")):
        if os.path.realpath(target) != real and os.access(target, os.X_OK):
            found = _toolkit_of_nvcc(target, depth + 1)
            if found:
                return found
    return None


def find_cuda_home() -> str | None:
    """CUDA_HOME / CUDA_PATH when valid, else the toolkit of the nvcc on PATH, else /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and _has_cudart(home):
            return os.path.realpath(home)
        if home:
            print(f"mixfast: ignoring {var}={home}: no bin/nvcc and lib64/libcudart there")
    nvcc = shutil.which("nvcc")
    home = _toolkit_of_nvcc(nvcc) if nvcc else None
    if home is None and _has_cudart("/usr/local/cuda"):
        home = os.path.realpath("/usr/local/cuda")
    return home
