"""Prepare stage: scenes and labels in, a chip folder out.

Label reading (``labels``), chipping (``chips``), the spatial split (``split``), the chip index and
summary (``index``) and the entry points that plan and run the whole stage (``run``).
"""
