"""The run directory of adabldm-train: checkpoints, the record, the loss log and plot.

Layout (``RunDir.root`` is ``--out``)::

    train.json          settings, data digest, split, model identity, progress, versions
    controlnet/         the trained ControlNet, diffusers format (config.json + safetensors)
    checkpoints/        step-NNNNNNNN.pt (weights, optimiser, loss scaler, step, RNG), the last K
    loss.jsonl          one line per optimiser step: step, loss, images/s
    loss.png            the loss against the step
    validation/         step-NNNNNNNN.png contact sheets

Every file is written to a temporary name and renamed into place, so a killed run leaves
either the old file or the new one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from adabldm_core.io import (
    LOCK_NAME,
    InputError,
    append_line,
    read_versioned_json,
    write_json,
    write_text,
)

from .fewshot import Split

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class TrainError(ValueError):
    """A run that cannot start or continue: other settings on a run directory, bad state."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def record(self) -> Path:
        return self.root / "train.json"

    @property
    def controlnet(self) -> Path:
        return self.root / "controlnet"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def loss_log(self) -> Path:
        return self.root / "loss.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.pt"

    def validation(self, step: int) -> Path:
        return self.root / "validation" / f"step-{step:08d}.png"

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(s for p in self.checkpoints.glob("step-*.pt") if (s := checkpoint_step(p.name)) is not None)


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint file name ``step-NNNNNNNN.pt``; None for any other name
    ('step-00001000 (copy).pt' from a file manager), which is not ours and is left alone."""
    match = re.fullmatch(r"step-(\d+)\.pt", name)
    return int(match[1]) if match else None


def save_checkpoint(run: RunDir, state: dict, keep: int) -> Path:
    """Write step ``state['step']`` atomically (temporary file, fsync, os.replace) and keep
    only the last ``keep`` checkpoints. torch.save streams to the file: an SD-size state
    (ControlNet + AdamW moments, ~4 GB) is never held twice in memory."""
    path = run.checkpoint(state["step"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for old in run.checkpoint_steps()[:-keep]:
        run.checkpoint(old).unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a damaged file
        raise TrainError(f"checkpoint {path} cannot be read ({exc}); delete it to resume from an earlier one") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise TrainError(f"checkpoint {path} has format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return state


def save_controlnet(run: RunDir, controlnet) -> None:
    """The trained ControlNet in diffusers format; an earlier one is replaced by renames."""
    new, old = run.root / ".controlnet.new", run.root / ".controlnet.old"
    for leftover in (new, old):  # from a run killed while saving
        shutil.rmtree(leftover, ignore_errors=True)
    controlnet.save_pretrained(new, safe_serialization=True)
    if run.controlnet.exists():
        run.controlnet.replace(old)
    new.replace(run.controlnet)
    shutil.rmtree(old, ignore_errors=True)


def run_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def settings_difference(old: dict, new: dict) -> list[str]:
    return [f"{k}: this run has {old.get(k)!r}, the command asks {new.get(k)!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def open_run(run: RunDir, steps: int, settings: dict) -> int:
    """The step to continue from (0: a new run); refuses another run's directory.

    Bit-for-bit equality with an uninterrupted run also needs the same device and, on the
    CPU, the same torch thread count (kernels split their sums by thread): a different
    count is allowed with a warning."""
    if run.record.exists():
        try:
            old = json.loads(run.record.read_text())
        except json.JSONDecodeError as exc:
            raise TrainError(f"{run.record} is not valid JSON ({exc})") from None
        diff = settings_difference(old.get("settings", {}), settings)
        if diff:
            raise TrainError(f"{run.root} holds another training run; " + "; ".join(diff)
                             + ". Use another --out, or the settings of that run")
        if old.get("torch_threads") not in (None, torch.get_num_threads()):
            log.warning("%s was trained with %s torch threads, this process has %d: the continued run will"
                        " differ from an uninterrupted one in the last bits", run.root, old["torch_threads"],
                        torch.get_num_threads())
        done = run.checkpoint_steps()
        start = done[-1] if done else 0
        if not done and old.get("step"):  # checkpoints deleted to save space: hours of work redone
            log.warning("%s records step %s but %s holds no checkpoint: training again from step 0",
                        run.record, old["step"], run.checkpoints)
        if start > steps:
            raise TrainError(f"{run.root} has reached step {start}, beyond --steps {steps}")
        return start
    if run.root.exists() and any(p.name != LOCK_NAME for p in run.root.iterdir()):  # our own lock is no content
        raise TrainError(f"{run.root} is not empty and holds no train.json: not a training run directory")
    return 0


def truncate_loss_log(run: RunDir, step: int) -> None:
    """Drop the lines past ``step`` (written after the checkpoint a resumed run starts from)."""
    if run.loss_log.exists():
        lines = [ln for ln in run.loss_log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        write_text(run.loss_log, "".join(ln + "\n" for ln in lines))


def read_losses(run: RunDir) -> list[tuple[int, float]]:
    if not run.loss_log.exists():
        return []
    rows = [json.loads(ln) for ln in run.loss_log.read_text().splitlines() if ln]
    return [(r["step"], r["loss"]) for r in rows]



class LossLog:
    """Per-step losses kept on the device and written in groups (one host sync per group)."""

    def __init__(self, run: RunDir, images_per_step: int):
        self.run, self.images_per_step = run, images_per_step
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.t0 = time.perf_counter()
        self.last: float | None = None
        self.images_per_s = 0.0

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss))

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([v for _, v in self.pending]).tolist()  # the one sync
        now = time.perf_counter()
        self.images_per_s = len(values) * self.images_per_step / max(now - self.t0, 1e-9)
        self.t0 = now
        for (step, _), value in zip(self.pending, values):
            if not np.isfinite(value):
                raise TrainError(f"the loss became {value} at step {step} (learning rate too high, or fp16 overflow)")
            line = {"step": step, "loss": value, "images_per_s": round(self.images_per_s, 3)}
            append_line(self.run.loss_log, json.dumps(line))
        self.last = values[-1]
        self.pending.clear()



def read_split(root: str | Path) -> tuple[Split, dict]:
    """The few-shot split a run directory recorded (train.json) and that record; an
    InputError names the file and what is wrong."""
    run = RunDir(Path(root))
    if not run.record.is_file():
        raise InputError(f"{run.root}: no train.json (expected an adabldm-train --out folder)")
    record = read_versioned_json(run.record, FORMAT_VERSION, "training record", "train it again with adabldm-train",
                                 InputError)
    try:
        s = record["split"]
        split = Split(tuple(s["train"]), tuple(s["held_out"]), str(s["rule"]))
    except (KeyError, TypeError):
        raise InputError(f"{run.record} records no few-shot split (train, held_out, rule)") from None
    return split, record


def write_record(run: RunDir, record: dict, step: int, steps: int, loss, status: str, history=()) -> None:
    """train.json: ``record`` with the progress (step of steps, status, last and mean loss)."""
    tail = [v for _, v in history][-100:]
    write_json(run.record, {**record, "step": step, "steps": steps, "status": status, "final_loss": loss,
                            "loss_mean_last_100": float(np.mean(tail)) if tail else None})



def loss_plot(history: list[tuple[int, float]], width: int = 640, height: int = 360) -> np.ndarray:
    """(H, W, 3) uint8: the per-step loss (grey) and its running mean (blue) against the step
    (drawn with Pillow: no plotting library needed)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 64, width - 16, 16, height - 28
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if not history:
        draw.text((left + 8, top + 8), "no steps yet", fill=(0, 0, 0))
        return np.asarray(image)
    steps = np.array([s for s, _ in history], dtype=float)
    values = np.array([v for _, v in history], dtype=float)
    window = max(1, len(values) // 50)
    mean = np.convolve(values, np.ones(window) / window, mode="valid")
    lo, hi = float(values.min()), float(values.max())
    span, first, last = (hi - lo) or 1.0, steps[0], steps[-1]

    def xy(s, v):
        x = left + (s - first) / max(last - first, 1.0) * (right - left)
        return x, bottom - (v - lo) / span * (bottom - top)

    draw.line([xy(s, v) for s, v in zip(steps, values)], fill=(180, 180, 180), width=1)
    draw.line([xy(s, v) for s, v in zip(steps[window - 1 :], mean)], fill=(30, 80, 200), width=2)
    draw.text((4, top), f"{hi:.4g}", fill=(0, 0, 0))
    draw.text((4, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
    draw.text((left, bottom + 6), f"step {int(first)}", fill=(0, 0, 0))
    draw.text((right - 80, bottom + 6), f"step {int(last)}", fill=(0, 0, 0))
    draw.text((left + 8, top + 4), f"loss (mean of {window})", fill=(30, 80, 200))
    return np.asarray(image)
