"""Train stage: chip dataset, the Lightning module and fit, metrics, and the report's figures."""
