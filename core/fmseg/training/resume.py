"""Resumable training state shared by the trainers (written at every validation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def save_resume(
    path: Path, model, opt, step: int, rng: np.random.Generator, elapsed: float, **extra
) -> None:
    """Atomically write model, optimiser, step, both random states, elapsed time and ``extra``."""
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "rng": rng,
        "elapsed": elapsed,
        "torch_rng": torch.get_rng_state(),
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_resume(path: Path, model, opt) -> dict:
    """Restore what :func:`save_resume` wrote into ``model``/``opt`` and torch's random state.

    Returns the state dict (``step``, ``rng``, ``elapsed`` and the extras).
    """
    state = torch.load(path, weights_only=False)  # our own file: it holds a numpy Generator
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["torch_rng"])
    return state
