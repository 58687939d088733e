"""Which implementation runs each op: the compiled extension, Triton, or the torch reference.

Backends:
  "cpp"    longrl._C CPU kernel              (CPU tensors, needs the built extension)
  "cuda"   longrl._C CUDA kernel             (CUDA tensors, needs an extension built with CUDA)
  "triton" longrl.kernels Triton kernel      (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1)
  "aten"   torch's own fused op (e.g. flash attention returning the LSE)
  "torch"  plain torch math (the reference)
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence

import torch

from longrl.errors import BackendError
from longrl.kernels._interpret import triton_interpreting

try:
    from longrl import _C  # noqa: F401  (loading it registers torch.ops.longrl.*)

    C_IMPORT_ERROR: str | None = None
except ImportError as exc:  # source checkout without a build
    _C = None
    C_IMPORT_ERROR = str(exc)

BACKENDS = ("cpp", "cuda", "triton", "aten", "torch")
_warned_fallback = False


def has_extension() -> bool:
    """True when longrl._C is importable."""
    return _C is not None


def extension_has_cuda() -> bool:
    """True when longrl._C was built with its CUDA kernels."""
    return _C is not None and bool(getattr(_C, "built_with_cuda", False))


def triton_usable(device_type: str) -> bool:
    """Triton runs on CUDA devices, and on CPU tensors only in interpreter mode (TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    return device_type == "cpu" and triton_interpreting()


def available(backend: str, device_type: str) -> bool:
    """Whether `backend` can run on tensors of `device_type` in this process."""
    if backend == "cpp":
        return device_type == "cpu" and has_extension()
    if backend == "cuda":
        return device_type == "cuda" and extension_has_cuda()
    if backend == "triton":
        return triton_usable(device_type)
    return backend in ("aten", "torch")


def _warn_fallback_once(op: str) -> None:
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    warnings.warn(
        f"longrl._C is not available ({C_IMPORT_ERROR}); '{op}' and the other compiled ops run their torch "
        "reference. Build it with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=3,
    )


def auto_candidates(device_type: str, preference: Sequence[str]) -> list[str]:
    """The backends "auto" may pick: Triton on CPU only runs interpreted (a test facility, far too slow for
    real work), so auto never chooses it there; it stays available when asked for by name."""
    return [b for b in preference if not (b == "triton" and device_type == "cpu")]


def resolve(op: str, device_type: str, preference: Sequence[str], requested: str | None = None) -> str:
    """Pick the backend for `op` on `device_type`.

    `preference` lists the candidates for this device, best first; the first available one wins. A
    `requested` backend is used as is, or raises BackendError when it cannot run here.
    """
    if requested is not None and requested != "auto":
        if requested not in BACKENDS:
            raise BackendError(f"{op}: unknown backend '{requested}' (choose from {', '.join(BACKENDS)})")
        if requested not in preference or not available(requested, device_type):
            raise BackendError(f"{op}: backend '{requested}' is not available for {device_type} tensors here")
        return requested
    for backend in auto_candidates(device_type, preference):
        if available(backend, device_type):
            if backend == "torch" and any(b in ("cpp", "cuda") for b in preference) and not has_extension():
                _warn_fallback_once(op)
            return backend
    raise BackendError(f"{op}: no backend available for {device_type} tensors")
