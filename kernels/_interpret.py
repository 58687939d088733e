"""Whether Triton runs in its CPU interpreter. Imports nothing from triton, so longrl._backend can use it when
triton is not installed."""

from __future__ import annotations

import os


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET=1: Triton then runs kernels on CPU tensors in its (slow) interpreter.

    Read on every call, not at import: tests set and clear the variable within one process.
    """
    return os.environ.get("TRITON_INTERPRET") == "1"
