"""Captured tensors and INT8/FP16 calibration (installed as ``adabldm_calibration``).

Planned (issue: calibration/); nothing here yet.
"""
