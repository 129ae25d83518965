"""The demo model on the README's main command: is the background the source, is the defect visible?

Runs, as a user would, ``adabldm-run --batch --num 4 --steps 20 --out W/run``
(the demo model is the default), then ``adabldm-export --out W/bundle`` and the same run
through ``--bundle W/bundle --backend onnxruntime``; measures each output folder with
adabldm_ref.demo.quality (background PSNR outside M against the source, defect strength)
and writes benchmarks/results/demo_cpu.{md,json}. ``--defects`` adds runs with each demo
ControlNet (``--defect crack|scratch|stain``).

    python benchmarks/bench_demo.py --work /tmp/bench_demo [--defects]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import finish, header_lines, start

from adabldm_ref.demo import record as demo_record
from adabldm_ref.demo.quality import run_figures

MAIN = ["--batch", "--num", "4", "--steps", "20"]
RESULTS = Path(__file__).parent / "results"
TARGETS = {"bg_psnr": 30.0, "strength": 5.0}  # issue 13


def timed(cmd: list[str]) -> float:
    env = {**os.environ}
    env.pop("ADABLDM_MODEL", None)  # the commands' own default: the demo model
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def run(args: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return timed([sys.executable, "-m", "adabldm_engine.cli", *args, "--out", str(out), "--quiet"])


def manifest_means(out: Path) -> dict:
    lines = [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines() if s.strip()]
    q = [line.get("quality", {}) for line in lines]
    return {k: sum(x[k] for x in q) / len(q) for k in ("bg_psnr_before", "bg_psnr_after") if all(k in x for x in q)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--defects", action="store_true", help="also one run per demo ControlNet")
    a = p.parse_args()
    meta = start(__file__)
    rows = {}
    seconds = run(MAIN, a.work / "run")
    rows["main command (torch)"] = {"seconds": seconds, **run_figures(a.work / "run", "defect")["mean"],
                                    "manifest": manifest_means(a.work / "run")}
    bundle = a.work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    export_s = timed([sys.executable, "-m", "adabldm_export.cli", "--out", str(bundle), "--batch", "1"])
    seconds = run([*MAIN, "--bundle", str(bundle), "--backend", "onnxruntime"], a.work / "ort")
    rows["main command, --backend onnxruntime"] = {"seconds": seconds, **run_figures(a.work / "ort", "defect")["mean"],
                                                   "manifest": manifest_means(a.work / "ort")}
    if a.defects:
        for d in ("crack", "scratch", "stain"):
            seconds = run([*MAIN, "--defect", d], a.work / d)
            rows[f"--defect {d}"] = {"seconds": seconds, **run_figures(a.work / d, d)["mean"],
                                     "manifest": manifest_means(a.work / d)}
    record = finish(meta) | {"rows": rows, "export_seconds": export_s, "cpus": os.cpu_count(),
                             "demo": demo_record()["figures"], "cn_steps": demo_record()["settings"]["cn_steps"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_cpu.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "demo_cpu.md").write_text(markdown(record))
    print(markdown(record))


def markdown(r: dict) -> str:
    head = ("| run | background PSNR after adaptation, outside M (dB) | manifest bg PSNR before / after (dB) |"
            " defect strength (x) | mean abs change inside / outside M | wall time (s) |\n|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {name} | {x['bg_psnr']:.2f} | {x['manifest'].get('bg_psnr_before', float('nan')):.2f} /"
        f" {x['manifest'].get('bg_psnr_after', float('nan')):.2f} | {x['strength']:.2f} |"
        f" {x['change_inside']:.1f} / {x['change_outside']:.1f} | {x['seconds']:.0f} |\n"
        for name, x in r["rows"].items())
    demo = r["demo"]
    cn_times = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in demo["controlnets"].items())
    main, ort = r["rows"]["main command (torch)"], r["rows"]["main command, --backend onnxruntime"]
    met = [main["bg_psnr"] >= TARGETS["bg_psnr"], main["strength"] >= TARGETS["strength"]]
    verdict = {2: "both targets are met", 1: "one target is met", 0: "both targets are missed"}[sum(met)]
    return (
        "# The demo model on the README's main command (CPU)\n\n" + "\n".join(header_lines(r)) + "\n\n"
        "`python benchmarks/bench_demo.py --work W` : `adabldm-run --batch --num 4 --steps 20`"
        " (demo model, default object/defect: the crack ControlNet, scikit-image brick and gravel, procedural masks;"
        " adaptation on the region of interest, 20 steps at 5e-4),"
        f" then `adabldm-export` ({r['export_seconds']:.0f} s) and the same run through `--backend onnxruntime`."
        f" Machine: {r['cpus']} CPUs shared with other work (wall times vary with the load).\n"
        f"Targets of issue 13: background PSNR >= {TARGETS['bg_psnr']:g} dB, defect strength >= {TARGETS['strength']:g}x.\n\n"
        + head + body +
        f"\nDemo model training (adabldm_ref/demo/weights/demo.json): VAE held-out reconstruction PSNR"
        f" {demo['vae']['val_psnr_db']} dB after {demo['vae']['seconds']:.0f} s; UNet final loss"
        f" {demo['unet']['final_loss']:.3f} after {demo['unet']['seconds']:.0f} s; ControlNets (adabldm-train,"
        f" {r['cn_steps']} steps each; seconds of their first 400) {cn_times}.\n\n"
        f"Reading: on the main command {verdict} (background {main['bg_psnr']:.2f} dB, strength {main['strength']:.2f}x);"
        " ONNX Runtime " + ("gives the same figures (within 0.05 dB)." if abs(ort["bg_psnr"] - main["bg_psnr"]) < 0.05
                             else "differs (see the table).") + "\n"
    )

if __name__ == "__main__":
    main()
