"""Training and evaluation helpers for click-prompted decoders (never run in CI)."""
