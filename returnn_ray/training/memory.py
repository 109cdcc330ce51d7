"""``torch_log_memory_usage``: the GPU memory lines RETURNN's torch engine logs.

RETURNN (``Engine._reset_dev_memory_stats`` / ``_maybe_report_dev_memory_stats``) resets the peak
statistics when a train epoch starts and logs, for a CUDA device only, ``Memory usage (cuda:0):
alloc cur .. alloc peak .. reserved cur .. reserved peak ..`` at the epoch's start and end. On the
CPU it logs nothing, and neither does returnn-ray.
"""

from __future__ import annotations

from typing import Callable

import torch


def reset_peak(device: torch.device) -> None:
    """Start a new peak (RETURNN: at the start of each train epoch)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_usage_line(device: torch.device) -> str | None:
    """RETURNN's memory line for ``device``; None on a device that is not CUDA (RETURNN logs nothing there).

    >>> print(memory_usage_line(torch.device("cpu")))
    None
    """
    if device.type != "cuda":
        return None
    stats = [
        f"alloc cur {human_bytes_size(torch.cuda.memory_allocated(device))}",
        f"alloc peak {human_bytes_size(torch.cuda.max_memory_allocated(device))}",
        f"reserved cur {human_bytes_size(torch.cuda.memory_reserved(device))}",
        f"reserved peak {human_bytes_size(torch.cuda.max_memory_reserved(device))}",
    ]
    return f"Memory usage ({_name(device)}): " + " ".join(stats)


def _name(device: torch.device) -> str:
    """RETURNN prints its device string (``cuda`` or ``cuda:N`` as configured); here the index is known."""
    return f"cuda:{device.index}" if device.index is not None else "cuda"


def human_bytes_size(n: float, factor: int = 1024, frac: float = 0.8, prec: int = 1) -> str:
    """RETURNN's ``util.basic.human_bytes_size``: K, M, G, T once past ``frac`` of the unit.

    >>> human_bytes_size(100), human_bytes_size(900), human_bytes_size(3 * 1024**3)
    ('100B', '0.9KB', '3.0GB')
    """
    units = ["", "K", "M", "G", "T"]
    i = 0
    while i < len(units) - 1 and n > factor ** (i + 1) * frac:
        i += 1
    return (str(n) if i == 0 else f"{float(n) / factor**i:.{prec}f}{units[i]}") + "B"


def log_memory_usage(enabled: bool, device: torch.device, log: Callable[[str], None], *, epoch_start: bool) -> None:
    """The worker's one call at a train epoch's start (``epoch_start``: the peak is reset first) and end."""
    if not enabled:
        return
    if epoch_start:
        reset_peak(device)
    line = memory_usage_line(device)
    if line is not None:
        log(line)
