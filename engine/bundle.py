"""Reading a bundle: what ``adabldm-export`` wrote, checked before ``adabldm-run --bundle`` uses it.

bundle/
  manifest.json          identity, resolution, batch sizes, scheduler, networks, tools
  onnx/<network>.onnx    (+ <network>.onnx.data for graphs over 2 GB)
  vae_decoder.safetensors, vae_config.json   the decoder that adaptation fine-tunes
  tokenizer/             the text tokenizer
  validation.json        per-network agreement with the PyTorch modules
  calibration/           inputs captured from reference runs (capture.json, captured.npz),
                         later the FP16 precision map and INT8 graphs (adabldm-calibrate)
The manifest is written last: a folder without one is an unfinished export. The writer is
:mod:`adabldm_export.bundle`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from adabldm_core.io import file_sha256, read_versioned_json
from adabldm_core.specs import NetworkSpec, TensorSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DECODER_KEYS = ("decoder.", "post_quant_conv.")


class BundleError(ValueError):
    """A bundle that is missing, unfinished, modified or made for something else."""


@dataclass
class Bundle:
    root: Path
    manifest: dict = field(repr=False)

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "Bundle":
        """Read and check a bundle; BundleError names what is wrong and how to re-export."""
        root = Path(root)
        redo = f"re-export it: adabldm-export --out {root} --force (with the --model/--controlnet it was made from)"
        if not root.is_dir():
            raise BundleError(f"bundle not found: {root}")
        if not (root / MANIFEST).is_file():
            raise BundleError(f"{root} has no {MANIFEST} (unfinished or not a bundle); {redo}")
        manifest = read_versioned_json(root / MANIFEST, FORMAT_VERSION, "bundle", redo, BundleError)
        bundle = cls(root, manifest)
        if verify:
            bundle.verify_files(redo)
        return bundle

    def hashed_files(self) -> dict[str, str]:
        m = self.manifest
        files = {}
        for entry in m["networks"].values():
            files.update(entry["sha256"])
        files.update(m["adaptation"]["sha256"])
        files.update(m["tokenizer"]["sha256"])
        return files

    def verify_files(self, redo: str) -> None:
        for rel, digest in self.hashed_files().items():
            path = self.root / rel
            if not path.is_file():
                raise BundleError(f"bundle file missing: {path}; {redo}")
            if file_sha256(path) != digest:
                raise BundleError(f"bundle file modified since export: {path} (sha256 differs); {redo}")

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    @property
    def identity(self) -> str:
        return self.manifest["model"]["identity"]

    def check(self, resolution: int | None = None, identity: str | None = None) -> None:
        """Refuse a bundle made for another resolution or another model."""
        if resolution is not None and resolution != self.resolution:
            raise BundleError(
                f"bundle {self.root} is for {self.resolution} px, not {resolution} px; export one for it:"
                f" adabldm-export --resolution {resolution} --out NEW_DIR (with your --model/--controlnet)"
            )
        if identity is not None and identity != self.identity:
            raise BundleError(
                f"bundle {self.root} was exported from model {self.identity}, not {identity} (weights"
                " differ); re-export from this model: adabldm-export --model M --controlnet C --out NEW_DIR"
            )

    def spec(self, name: str) -> NetworkSpec:
        entry = self.manifest["networks"][name]
        def tensors(key):
            return tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in entry[key])
        return NetworkSpec(name, tensors("inputs"), tensors("outputs"))

    def graph(self, name: str) -> Path:
        return self.root / self.manifest["networks"][name]["file"]

    def tokenizer(self):
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(self.root / "tokenizer", local_files_only=True)

    def adapt_vae(self):
        """An AutoencoderKL holding the exported decoder (its encoder is unused)."""
        from diffusers import AutoencoderKL
        from safetensors.torch import load_file

        config = json.loads((self.root / self.manifest["adaptation"]["config"]).read_text())
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        vae = AutoencoderKL.from_config(config)
        missing, unexpected = vae.load_state_dict(load_file(str(self.root / self.manifest["adaptation"]["file"])), strict=False)
        bad = [k for k in missing if k.startswith(DECODER_KEYS)] + list(unexpected)
        if bad:
            raise BundleError(f"decoder weights in {self.root} do not fit the VAE config: {bad[:5]}")
        return vae.eval().requires_grad_(False)
