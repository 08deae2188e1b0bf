"""The status line shared by the dock widgets."""

from __future__ import annotations

from magicgui import widgets as mw
from napari.utils.notifications import show_error


class StatusContainer(mw.Container):
    """A magicgui Container whose subclass sets ``self.status`` (a ``mw.Label``)."""

    status: mw.Label

    def _say(self, message: str) -> None:
        """Show ``message`` in the status line."""
        self.status.value = message

    def _error(self, message: str) -> bool:
        """Show ``message`` as an error (status line and napari notification); returns False."""
        self._say(f"Error: {message}")
        show_error(message)
        return False
