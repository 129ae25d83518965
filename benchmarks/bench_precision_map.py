"""FP16 precision map of the tiny model's networks: FP16 error without and with the map.

Exports the built-in tiny model (its capture: scikit-image textures), then runs
``adabldm-calibrate --reuse-capture --precision-map``'s library call on it and records,
per network, the rel. L2 error of FP16 against FP32 (PyTorch on the CPU, and ONNX
Runtime's FP16 graph), the largest FP32 activation and the modules the map keeps in FP32.
Results: benchmarks/results/precision_map_cpu.{md,json}.

    python benchmarks/bench_precision_map.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from adabldm_calibration.calibrate import CalibrateConfig, calibrate
from adabldm_calibration.precision_map import PrecisionConfig
from adabldm_export.bundle import ExportConfig, export_bundle
from common import RESULTS, finish, header_lines, start, write_report

from adabldm_ref.models import build_tiny


def fmt(x) -> str:
    return f"{x:.2e}" if isinstance(x, float) else str(x)


def main() -> None:
    meta = start(__file__)
    models = build_tiny()
    with tempfile.TemporaryDirectory() as tmp:
        export_bundle(models, ExportConfig(out=Path(tmp) / "tiny", batch_sizes=(1, 4)))
        report = calibrate(models, CalibrateConfig(bundle=Path(tmp) / "tiny", precision=PrecisionConfig()),
                           progress=lambda s: print(s, flush=True))
    networks = report["precision"]["networks"]
    finish(meta)
    lines = ["# FP16 precision map of the tiny model (CPU)", "", *header_lines(meta),
             f"- settings: {PrecisionConfig()}", "",
             "| network | max abs FP32 activation | FP16 rel. L2 | with the map | ORT FP16 rel. L2 | with the map |"
             " kept in FP32 |", "|---|---|---|---|---|---|---|"]
    for name, e in networks.items():
        ort = e["onnxruntime_fp16"]
        kept = ", ".join(k["module"] or "<whole network>" for k in e["keep_fp32"]) or "none"
        lines.append(f"| {name} | {e['max_abs_fp32']:.1f} | {fmt(e['rel_l2_fp16'])} | {fmt(e['rel_l2_with_map'])}"
                     f" | {fmt(ort.get('without_map'))} | {fmt(ort.get('with_map'))} | {kept} |")
    lines += ["", f"ONNX Runtime: {networks[next(iter(networks))]['onnxruntime_fp16']['note']}."]
    write_report(RESULTS / "precision_map_cpu", {"meta": meta, "networks": networks}, lines)


if __name__ == "__main__":
    main()
