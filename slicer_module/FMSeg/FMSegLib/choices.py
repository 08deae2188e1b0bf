"""Menu choices of the FMSeg module (plain data: the module imports this before fmseg exists).

tests/core/test_slicer_files.py checks these names against fmseg's own registries
(``fmseg.incontext.BACKENDS`` / ``SAMPLERS``, ``fmseg.adapters.methods.METHODS``, the model
registry's promptable and volumetric kinds).
"""

VIEWS = ("axial", "coronal", "sagittal")
BACKENDS = (
    "auto",
    "incontext-prior",
    "incontext-small",
    "prototype",
    "interpolation",
    "interpolation-fitted",
    "nearest",
    "intensity",
    "universeg-v1",
)
#: The backends whose results take corrective clicks (``fmseg.incontext.correct.takes_clicks``).
CLICK_BACKENDS = ("auto", "incontext-prior")
SAMPLERS = ("tyche-small", "incontext-small+tta", "interpolation+tta", "tyche-v1")
#: fmseg.adapters.methods.METHODS, prompt-free ones first (they apply to a whole volume).
ADAPTER_METHODS = (
    "spatial-adapter",
    "linear-probe",
    "decoder",
    "lora",
    "arena",
    "bitfit",
    "norm-affine",
)
#: Base models of adapters: LiteMedSAM (2D slices), HD-BET (3D, 1.5 mm).
ADAPTER_BASES = ("litemedsam", "hdbet")
