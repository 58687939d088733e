"""Turn a user's device name (a flag, a config value) into a torch.device, or a one-line ConfigError.

Checked before anything expensive runs (loading weights, starting workers), so `--device cuda` on a machine
without a GPU fails at once with a message naming the device, not with an AssertionError deep in torch.
"""

from __future__ import annotations

import torch

from longrl.errors import ConfigError

# Device types a model can be put on here, with the torch module that says whether one is present.
_ACCELERATORS = ("cuda", "xpu", "mps")


def _count(kind: str) -> int:
    """How many devices of type `kind` this process can use (0 when torch lacks the backend)."""
    module = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
    if module is None or not module.is_available():
        return 0
    count = getattr(module, "device_count", None)
    return int(count()) if count is not None else 1


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """ "cpu" | "cuda" | "cuda:N" | "xpu[:N]" | "mps" | "auto" (None = "auto": the first GPU if there is one,
    else the CPU) or a torch.device -> a torch.device that exists in this process.

    "cuda" without an index stays index-free (torch then uses the current device, which distributed jobs set
    per rank). Raises ConfigError naming the device for a malformed name, a device type that is not
    supported, or a device that is not available here.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda") if _count("cuda") else torch.device("cpu")
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(str(name).strip().lower())
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(
                f"device {name!r} is not a device name; use cpu, cuda, cuda:N or auto"
            ) from None
    if device.type == "cpu":
        return device
    if device.type not in _ACCELERATORS:
        raise ConfigError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or auto")
    count = _count(device.type)
    if count == 0:
        raise ConfigError(
            f"device {str(device)!r} is not available: torch {torch.__version__} sees no {device.type} device "
            "here; use cpu or auto"
        )
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"device {str(device)!r} is not available: there are {count} {device.type} device(s) "
            f"(indices 0..{count - 1})"
        )
    return device
