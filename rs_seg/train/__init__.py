"""Train stage: chip dataset, networks, the Lightning fit, evaluation and the training report."""
