"""Environment report for `longrl doctor`: versions, devices, the compiled extension, each op's backend."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil

import torch

from longrl import _backend

OPTIONAL_PACKAGES = ("triton", "transformers", "vllm", "decord", "av", "typer", "pybind11", "numpy")


def package_version(name: str) -> str:
    """Installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    """Everything doctor reports, as plain data (also written with --json)."""
    from longrl import __version__, ops

    devices = [
        {
            "index": i,
            "name": torch.cuda.get_device_name(i),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
        }
        for i in range(torch.cuda.device_count())
    ]
    return {
        "longrl": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "packages": {name: package_version(name) for name in OPTIONAL_PACKAGES},
        "nvcc": shutil.which("nvcc"),
        "cuda_devices": devices,
        "extension": {
            "built": _backend.has_extension(),
            "with_cuda": _backend.extension_has_cuda(),
            "error": _backend.C_IMPORT_ERROR,
        },
        "op_backends": ops.backend_table(),
    }
