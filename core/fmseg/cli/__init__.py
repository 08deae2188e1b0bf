"""Command line: ``fmseg segment``, ``incontext``, ``uncertainty``, ``adapt``, ``models``.

One module per command (``add_parser`` and ``run``); ``files`` reads inputs and checks outputs
with one-line errors, ``common`` holds the progress printer and argument types, ``app`` the
parser and the entry point.
"""

from .app import main

__all__ = ["main"]
