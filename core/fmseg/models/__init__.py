"""Neural network modules only (no I/O, no preprocessing)."""
