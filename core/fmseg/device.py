"""Which torch device runs the models: CUDA, then Apple MPS, then CPU, with a line saying so.

:func:`choose_device` is the one place this is decided; the registry loads models onto its
answer, and the front ends show its message (CLI on stderr, napari and Slicer status lines).
"""

from __future__ import annotations

import torch

#: Logger on which model loaders report what runs where (front ends show its INFO lines).
DEVICE_LOG = "fmseg.device"
#: What ``--device`` accepts (``cuda:N`` selects one CUDA device).
CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _cuda_name(index: int) -> str:
    try:
        return torch.cuda.get_device_name(index)
    except Exception:  # driver quirks: the name is only for the message
        return "CUDA device"


def choose_device(requested: str | torch.device | None = None) -> tuple[torch.device, str]:
    """Pick the device models run on and say what runs.

    Args:
        requested: None or ``"auto"`` (CUDA if torch sees a CUDA device, else Apple MPS if
            available, else CPU), or ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (or a
            ``torch.device``), which must then be usable.

    Returns:
        ``(device, message)``, e.g. ``(device("cpu"), "running on cpu (4 threads): no CUDA or
        MPS device found")``.

    Raises:
        ValueError: An unknown name, or a device this machine's torch cannot use (one line
            saying why and what to use instead).
    """
    text = "auto" if requested is None else str(requested).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda(torch.device("cuda", torch.cuda.current_device()), "")
        if _mps_available():
            return torch.device("mps"), "running on mps (Apple GPU; CUDA not available)"
        return torch.device("cpu"), (
            f"running on cpu ({torch.get_num_threads()} threads): no CUDA or MPS device found"
        )
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"unknown device '{requested}': use {', '.join(CHOICES)} or cuda:N"
        ) from None
    if device.type == "cpu":
        return device, f"running on cpu ({torch.get_num_threads()} threads), as asked"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU found"
            raise ValueError(f"device '{text}' is not available ({why}); use cpu or auto")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device '{text}' is not available: {torch.cuda.device_count()} CUDA device(s)"
            )
        return _cuda(torch.device("cuda", index), ", as asked")
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device '{text}' is not available (Apple MPS needs macOS 12.3+ on Apple "
                "silicon and a torch built with MPS); use cpu or auto"
            )
        return torch.device("mps"), "running on mps (Apple GPU), as asked"
    raise ValueError(f"unknown device '{requested}': use {', '.join(CHOICES)} or cuda:N")


def _cuda(device: torch.device, how: str) -> tuple[torch.device, str]:
    return device, f"running on {device} ({_cuda_name(device.index)}){how}"


def describe(device: str | torch.device) -> str:
    """What runs on an already chosen ``device``, for a front end's status line.

    E.g. ``"cpu, 2 threads"`` or ``"cuda:0 (NVIDIA H200)"``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        return f"cpu, {torch.get_num_threads()} threads"
    return str(dev)
