"""Captured tensors, FP16 precision map and INT8 calibration (installed as ``adabldm_calibration``).

- ``capture``: run the reference pipeline on OK images, record every network's inputs
  into ``<bundle>/calibration/`` (``adabldm-export`` does it; ``adabldm-calibrate`` again).
- ``loader``: those feeds as a Polygraphy data loader (also ONNX Runtime's calibration
  reader and the export validation's captured inputs).
- ``precision_map``: the layers FP16 builds keep in FP32, measured on the CPU.
- ``int8``: ONNX Runtime QDQ quantisation of the UNet+ControlNet, judged end to end
  against a PSNR floor; ``trt``: Polygraphy's TensorRT INT8 calibrator (GPU machines).
- ``calibrate`` / ``cli``: ``adabldm-calibrate``.
"""
