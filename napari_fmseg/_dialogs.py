"""Small Qt dialogs shared by the dock widgets."""

from __future__ import annotations

from qtpy.QtWidgets import QFileDialog, QWidget


def ask_path(parent: QWidget, title: str, pattern: str, save: bool = False) -> str:
    """A file chosen in Qt's open (or save) dialog; ``""`` when the user cancels."""
    ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
    path, _ = ask(parent, title, "", pattern)
    return path
