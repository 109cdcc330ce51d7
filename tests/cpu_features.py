"""What this machine's CPU can run, for tests whose expectation depends on it."""

from __future__ import annotations


def cpu_runs_a_bfloat16_lstm() -> bool:
    """Whether this CPU's oneDNN runs an LSTM under bfloat16 autocast. Some lack it (an AMD EPYC
    VM: "could not create a primitive descriptor for the LSTM forward propagation primitive");
    any other error is raised."""
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(3, 5, bidirectional=True, batch_first=True)(torch.ones(1, 2, 3))
    except RuntimeError as exc:
        if "could not create a primitive" not in str(exc):
            raise
        return False
    return True
