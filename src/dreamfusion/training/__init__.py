"""The optimization: the loop, the regularizers, the optimizer, checkpoints and the run folder."""
