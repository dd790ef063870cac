"""Evaluation of a trained run, after inference in the stage order: it scores what users get.

Validation tuning and test scoring apply the model through the one predictor of
:mod:`rs_seg.model.predictor`, and the test scenes are mapped by ``rs-seg infer``'s own
function, so the metrics a bundle records come from the code path that maps users' scenes.
"""
