"""Few-shot adaptation of pretrained models: adapter methods, trainer, checkpoints."""
