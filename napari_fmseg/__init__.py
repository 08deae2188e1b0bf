"""napari plugin for fmseg: segment medical images with foundation models.

The contributions are declared in ``napari.yaml`` (npe2) and load lazily:

- ``_io``: NIfTI/NRRD reader, labels writer, sample CT;
- ``_dock``: the one **fmseg** dock widget (:class:`~napari_fmseg._dock.FmsegDock`), a tab per
  tool: Segment (``_widget``), In-context, Uncertainty and Adapt (``_*_widget``);
- the parts the tools are made of: ``_worker`` (:class:`~napari_fmseg._worker.JobRunner`: a
  core progress generator in a worker thread, progress bar, Cancel, status), ``_output`` (the
  output Labels layer with undo), ``_support`` (the support-set panel In-context and
  Uncertainty share), ``_controls`` (status line, buttons, layer choices);
- ``_layers``: pure conversions between napari layer data and fmseg prompts/masks.

Importing this package is cheap: it imports neither Qt, napari nor torch.
"""

__version__ = "0.1.0"
