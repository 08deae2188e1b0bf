"""Helpers of the FMSeg Slicer module, importable without Qt (tests use Slicer's core libraries).

* ``install``: which packages the "Install fmseg" button installs (no Slicer, no fmseg needed).
* ``mrml``: MRML nodes <-> numpy arrays in the core's ``(K, J, I)`` index space.
* ``markups``: Markups points and ROIs -> the core's slice prompts.
* ``logic``: :class:`~FMSegLib.logic.FMSegLogic`, everything the module computes.
* ``adapters``: the Logic's few-shot adapter part (segments -> training data, train, apply).
* ``selftest``: the module's round trip on a scene (``FMSegTest`` and tests/slicer run it).
* ``worker``: a background thread the Widget polls with a QTimer.

Only ``install`` may be imported before fmseg is installed; the others import fmseg.
"""
