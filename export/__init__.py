"""ONNX / TensorRT export of AdaBLDM's networks (installed as ``adabldm_export``).

Planned (issue: `adabldm-export`); nothing is exported yet.
"""
