"""Test setup: Triton runs in interpreter mode on CPU-only machines (set before any kernel is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
