"""INT8: ONNX Runtime static quantisation (QDQ) of the UNet+ControlNet, and its verdict.

The graph is calibrated on captured feeds (:class:`CapturedLoader`), quantised to QDQ
(uint8 activations, int8 per-channel weights: ONNX Runtime's fast x86 path), and judged
end to end: final images of the engine pipeline with the INT8 graph against the FP32
graph, same plans and seeds, samples held out from the calibration run. INT8 is offered
only if every sample's PSNR reaches ``floor_db``; a quality floor decides, not hope.

The TensorRT side (``polygraphy.backend.trt.Calibrator`` over the same loader) is in
``adabldm_calibration.trt``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from adabldm_core.io import file_sha256
from adabldm_core.metrics import psnr
from adabldm_engine.backends import OrtBackend
from adabldm_engine.runtime import bundle_engines, engine_pipeline

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.pipeline import ProceduralMasks, plan_sample

from .capture import FOLDER, CaptureError, ok_images_of
from .loader import CapturedLoader, ort_calibration_reader
from .precision_map import json_number

# Final images of the INT8 pipeline vs the FP32 pipeline, same seeds. 30 dB is where
# differences start to be visible on textures (the FP32 ONNX pipeline is held to 40 dB
# against PyTorch); below it INT8 changes the defects a detector is trained on.
INT8_PSNR_FLOOR_DB = 30.0
INT8_DIR = "int8"  # inside <bundle>/calibration
RECORD = "int8.json"
METHODS = ("minmax", "entropy", "percentile")


class Int8Error(ValueError):
    """A bundle or setting INT8 quantisation cannot use."""


@dataclass(frozen=True)
class Int8Config:
    """How the UNet+ControlNet is quantised and judged. Written into int8.json."""

    method: str = "minmax"  # ORT calibration: minmax | entropy | percentile
    per_channel: bool = True  # per-output-channel weight scales (the usual choice for convolutions)
    # Quantise convolutions and MatMul/Gemm with a weight; attention's activation x
    # activation MatMuls (Q K^T, P V) stay float: two dynamic ranges, little to gain.
    weighted_only: bool = True
    exclude: tuple[str, ...] = ()  # ONNX node-name prefixes left in float
    calibration_feeds: int = 16  # captured feeds at batch 1, spread over samples and timesteps
    floor_db: float = INT8_PSNR_FLOOR_DB
    parity_samples: int = 2  # held-out samples compared end to end
    parity_steps: int = 10  # DDIM steps of the parity runs
    parity_adapt_iters: int = 0  # decoder adaptation of the parity runs (PyTorch in both)

    def __post_init__(self):
        if self.method not in METHODS:
            raise Int8Error(f"calibration method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.calibration_feeds < 1 or self.parity_samples < 1 or self.parity_steps < 2:
            raise Int8Error(f"calibration_feeds {self.calibration_feeds}, --parity-samples {self.parity_samples},"
                            f" --parity-steps {self.parity_steps}: expected feeds and samples >= 1, steps >= 2")


def quantizable_nodes(model, cfg: Int8Config) -> list[str]:
    """Conv nodes and (``weighted_only``) MatMul/Gemm nodes with an initializer input."""
    inits = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = []
    for node in model.graph.node:
        if any(node.name.startswith(p) for p in cfg.exclude):
            continue
        weighted = any(i in inits or i in constants for i in node.input[1:])
        if node.op_type == "Conv" or (node.op_type in ("MatMul", "Gemm") and (weighted or not cfg.weighted_only)):
            names.append(node.name)
    return names


def quantize(fp32_path: str | Path, out_path: str | Path, loader: CapturedLoader, cfg: Int8Config = Int8Config()) -> Path:
    """Static QDQ quantisation of the graph at ``fp32_path``, calibrated on ``loader``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(fp32_path), load_external_data=False)
    nodes = quantizable_nodes(model, cfg)
    if not nodes:
        raise Int8Error(f"{fp32_path} has no node to quantise (Conv, MatMul, Gemm) outside {list(cfg.exclude)}")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    quantize_static(
        str(fp32_path), str(out_path), ort_calibration_reader(loader), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_quantize=nodes, calibrate_method=method,
        use_external_data_format=fp32_path.with_name(fp32_path.name + ".data").exists(),
    )
    return out_path


# ---------------------------------------------------------------------------------------
# End-to-end parity


@dataclass(frozen=True)
class Int8Parity:
    """Per held-out sample: PSNR of INT8 vs FP32 final images (and before adaptation)."""

    psnr_db: tuple[float, ...]
    blended_psnr_db: tuple[float, ...]
    floor_db: float

    @property
    def min_psnr_db(self) -> float:
        return min(self.psnr_db)

    @property
    def passes(self) -> bool:
        """Offer INT8 only if every sample reaches the floor."""
        return self.min_psnr_db >= self.floor_db

    def to_dict(self) -> dict:
        num = json_number  # strict JSON has no inf
        return {"psnr_db": [num(x) for x in self.psnr_db], "blended_psnr_db": [num(x) for x in self.blended_psnr_db],
                "min_psnr_db": num(self.min_psnr_db), "floor_db": self.floor_db, "passes": self.passes}


def parity_plans(ok_images, cfg: Int8Config, seed: int, object_name: str = "texture", defect: str = "defect"):
    """Generation settings and plans of the parity runs (seed: not the calibration's)."""

    res = ok_images[0].rgb.shape[0]
    gen = GenerationConfig(object_name=object_name, defect=defect, resolution=res, seed=seed,
                           sampler=SamplerConfig(steps=cfg.parity_steps), adapt=AdaptConfig(iters=cfg.parity_adapt_iters))
    return gen, [plan_sample(i, gen, ok_images, ProceduralMasks()) for i in range(cfg.parity_samples)]


def int8_engines(bundle, int8_path: str | Path, threads: int | None = None) -> dict:
    """The bundle's ONNX Runtime engines with the INT8 UNet+ControlNet swapped in."""

    require_folded(bundle)
    engines = bundle_engines(bundle, "onnxruntime", threads=threads)
    engines["unet_control"] = OrtBackend(bundle.spec("unet_control"), int8_path, threads=threads)
    return engines


def parity(bundle, int8_path: str | Path, ok_images, cfg: Int8Config = Int8Config(), seed: int = 1) -> Int8Parity:
    """Run FP32 and INT8 engine pipelines on the same held-out plans and compare final images."""

    gen, plans = parity_plans(ok_images, cfg, seed)
    tokenizer, vae = bundle.tokenizer(), bundle.adapt_vae()  # shared: adaptation trains per-sample copies
    samples = {}
    for name, engines in (("fp32", bundle_engines(bundle, "onnxruntime")), ("int8", int8_engines(bundle, int8_path))):
        with engine_pipeline(engines, tokenizer, vae, bundle.manifest["latent_scale"], gen) as pipe:
            samples[name] = pipe.run(plans)
    pairs = list(zip(samples["fp32"], samples["int8"]))
    return Int8Parity(tuple(psnr(b.image, a.image) for a, b in pairs),
                      tuple(psnr(b.blended, a.blended) for a, b in pairs), cfg.floor_db)


def require_folded(bundle) -> None:
    if "unet_control" not in bundle.manifest["networks"]:
        raise Int8Error(f"bundle {bundle.root} has the ControlNet and UNet as two graphs; INT8 quantises the"
                        " folded unet_control graph: export without --split-controlnet")


# ---------------------------------------------------------------------------------------
# In the bundle


def quantize_bundle(bundle, capture, cfg: Int8Config = Int8Config()) -> tuple[Path, dict]:
    """Quantise the bundle's unet_control into calibration/int8/ and judge it; returns (graph, record)."""

    require_folded(bundle)
    fp32 = bundle.manifest["networks"]["unet_control"]
    loader = CapturedLoader(capture, "unet_control", bundle.spec("unet_control"), batch=1, limit=cfg.calibration_feeds)
    if len(loader) < 2:
        raise CaptureError(f"the capture holds {len(loader)} unet_control feed(s); INT8 calibration needs more")
    out = bundle.root / FOLDER / INT8_DIR / "unet_control.onnx"
    quantize(bundle.graph("unet_control"), out, loader, cfg)
    result = parity(bundle, out, ok_images_of(capture), cfg,
                    seed=capture.settings["config"]["seed"] + 1)
    record = {
        "file": f"{FOLDER}/{INT8_DIR}/{out.name}",
        "sha256": file_sha256(out),
        "fp32_sha256": fp32["sha256"][fp32["file"]],  # checked against the file when the bundle opened
        "settings": dataclasses.asdict(cfg),
        "calibration_feeds": len(loader),
        "parity": result.to_dict(),
        "offered": result.passes,
    }
    return out, record
