"""The model contract every stage agrees on: bundles, normalization, field settings, prediction.

Below prepare, train and infer: it imports none of them, so inference reads a bundle and applies
a model without loading the training stack (Lightning, albumentations, pandas).
"""
