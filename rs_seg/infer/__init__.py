"""Infer stage: sliding-window prediction over whole scenes and vectorization into fields.

``python -m rs_seg.infer scene.tif -o fields.gpkg`` runs ``rs-seg infer`` (see ``__main__``).
"""
