"""Menu choices of the FMSeg module (plain data: the module imports this before fmseg exists).

tests/core/test_slicer_files.py checks these names against fmseg's own registries.
"""

VIEWS = ("axial", "coronal", "sagittal")
BACKENDS = ("incontext-small", "prototype", "interpolation", "nearest", "intensity", "universeg-v1")
SAMPLERS = ("tyche-small", "incontext-small+tta", "interpolation+tta", "tyche-v1")
ADAPTER_METHODS = ("decoder", "lora", "arena", "bitfit", "affine-norm", "linear", "spatial")
