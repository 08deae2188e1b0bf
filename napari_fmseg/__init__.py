"""napari plugin for fmseg: segment medical images with foundation models.

The contributions are declared in ``napari.yaml`` (npe2) and load lazily:

- ``_io``: NIfTI/NRRD reader, labels writer, sample CT;
- ``_widget``: the **Segment** dock widget (:class:`~napari_fmseg._widget.SegmentWidget`);
- ``_layers``: pure conversions between napari layer data and fmseg prompts/masks;
- ``_worker``: runs fmseg's progress generators in a napari worker thread.

Importing this package is cheap: it imports neither Qt, napari nor torch.
"""

__version__ = "0.1.0"
