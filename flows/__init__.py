"""Prefect flows: thin orchestration layers over the rs_seg stage functions."""
