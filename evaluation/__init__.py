"""adabldm-eval: judging a synthetic defect set as the field does (ALGORITHM.md, "Evaluation").

metrics.py (detection metrics), synthetic.py (reading a bulk job's output), samples.py
(per-sample and set figures), features.py (built-in diversity features; user networks for
IC-LPIPS / KID), data.py / baseline.py / segmenter.py / downstream.py (the downstream
segmentation protocol), report.py, cli.py. Imports adabldm_core and adabldm_ref only.
"""
