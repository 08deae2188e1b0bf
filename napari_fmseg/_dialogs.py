"""Small Qt dialogs shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QFileDialog, QWidget


def ask_path(parent: QWidget, title: str, pattern: str, save: bool = False) -> str:
    """A file chosen in Qt's open (or save) dialog; ``""`` when the user cancels."""
    ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
    path, _ = ask(parent, title, "", pattern)
    return path


def ask_then(
    parent: QWidget, title: str, pattern: str, action: Callable[[str], object], save=False
) -> None:
    """Ask for a file in Qt's dialog, then ``action(path)`` (nothing when the user cancels)."""
    if path := ask_path(parent, title, pattern, save):
        action(path)
