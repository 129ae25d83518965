"""What every benchmark shares: one timer, one machine-and-versions header, one report writer.

The scripts import it as their sibling (``from common import ...``: Python puts a script's
folder on sys.path); nothing else here is imported across scripts.

- timing: ``clock`` (the one clock), ``interleaved`` (median seconds of callables run
  round-robin, so that drift on a shared machine hits all alike), ``timed`` (one callable);
- header: ``start`` makes a run's record (date, machine, tool versions, command, load
  average), ``finish`` adds the load average at the end and the run's wall time, and
  ``header_lines`` prints that record as the head of a markdown report;
- report: ``write_report`` writes ``<stem>.json`` (the record) and ``<stem>.md`` (the lines)
  under benchmarks/results/ (or another folder) and prints the lines.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from adabldm_export.bundle import tool_versions

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------
# Timing


def sync(device: str | torch.device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: str | torch.device = "cpu", cpu_time: bool = False) -> float:
    """Seconds for timing: wall time, after a synchronize on CUDA.

    ``cpu_time`` (CPU only): this process's CPU time / torch threads instead, which equals
    wall time on an idle machine and, unlike wall time, does not grow when other jobs share
    the cores.
    """
    sync(device)
    if cpu_time and torch.device(device).type != "cuda":
        return time.process_time() / torch.get_num_threads()
    return time.perf_counter()


def interleaved(fns: Mapping[str, Callable], device: str | torch.device = "cpu", reps: int = 5,
                warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable after ``warmup`` untimed calls each (the first call
    allocates, picks kernels, compiles), run round-robin so drifts hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = clock(device)
            fn()
            times[k].append(clock(device) - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def timed(fn: Callable, device: str | torch.device = "cpu", reps: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn`` (synchronised), after ``warmup`` untimed calls."""
    return interleaved({"x": fn}, device, reps, warmup)["x"]


# ---------------------------------------------------------------------------------------
# Machine, versions, command: the header of every report


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine(device: str | torch.device = "cpu") -> dict:
    """CPU, cores, torch threads, OMP_WAIT_POLICY, platform, the device; GPU and CUDA on CUDA."""
    device = torch.device(device)
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "platform": platform.platform(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """The command line that ran ``script`` (a path or name under benchmarks/): its own
    arguments, ``argv`` (default: sys.argv[1:])."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(shlex.quote(str(a)) for a in args)])


def versions() -> dict[str, str]:
    """The bundle's tool versions, and OpenVINO's where installed (read from its metadata:
    importing it costs a second)."""
    from importlib import metadata

    out = tool_versions()
    try:
        out["openvino"] = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        pass
    return out


def start(script: str, argv: Sequence[str] | None = None, device: str | torch.device = "cpu") -> dict:
    """A run's record as it starts: date, machine, tool versions (torch, diffusers,
    transformers, onnx, onnxruntime, python, tensorrt where installed), command, load
    average. The script adds its settings and results to it."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(device), "versions": versions(), "command": command(script, argv),
            "load_average_start": os.getloadavg()[0]}


def finish(record: dict) -> dict:
    """Adds the load average at the end and the wall seconds since ``record["date"]``."""
    began = datetime.datetime.fromisoformat(record["date"])
    record["load_average_end"] = os.getloadavg()[0]
    record["wall_s"] = (datetime.datetime.now(began.tzinfo) - began).total_seconds()
    return record


def header_lines(record: dict) -> list[str]:
    """Date, machine, versions, command (and load average, run time where recorded) of a
    report, as markdown list items."""
    m = record["machine"]
    where = f"{m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}"
    where += f", OMP_WAIT_POLICY={m['omp_wait_policy']})" if "omp_wait_policy" in m else ")"
    if m.get("gpu"):
        where += f"; GPU {m['gpu']}" + (f" (CUDA {m['cuda']})" if m.get("cuda") else "")
    lines = [f"- date: {record['date']}", f"- machine: {where}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
             f"- command: `{record['command']}`"]
    if "load_average_start" in record:
        load = f"- load average at start {record['load_average_start']:.2f}"
        if "load_average_end" in record:
            load += f", at end {record['load_average_end']:.2f}"
        if "wall_s" in record:
            load += f"; run took {record['wall_s']:.0f} s"
        lines.append(load + " (the machine may be shared)")
    return lines


# ---------------------------------------------------------------------------------------
# Report


def finite(value):
    """JSON has no infinity: inf (identical images) is written as the string "inf"."""
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_report(stem: Path, record: dict, lines: Sequence[str]) -> list[str]:
    """``<stem>.json``: the record; ``<stem>.md``: the lines. Prints the lines; returns them."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(finite(record), indent=2, default=str) + "\n")
    lines = list(lines)
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return lines


# ---------------------------------------------------------------------------------------
# Models only benchmarks use


def sd_size_vae(seed: int = 0):
    """The SD-1.5 VAE architecture with seeded random weights (speed does not depend on them)."""
    import diffusers

    from adabldm_ref.models import SD15_VAE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = diffusers.AutoencoderKL(**SD15_VAE)
    return vae.eval().requires_grad_(False)
