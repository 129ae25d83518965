"""Writes native/tests/ddim_expected.json: the DDIM tables, stage plans and noise-draw
counts the Python side computes, which native/tests/test_ddim.cpp checks the C++ against.

    python native/tests/make_ddim_expected.py      (rerun when the scheduler maths changes)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from adabldm_engine.native import noise_draws
from adabldm_ref.config import SamplerConfig, SchedulerConfig
from adabldm_ref.models import make_scheduler
from adabldm_ref.sampler import ddim_schedule, stage_plan

SCHEDULERS = {
    "sd15": SchedulerConfig(),
    "trailing": SchedulerConfig(timestep_spacing="trailing", steps_offset=0),
    "linspace_alpha_one": SchedulerConfig(timestep_spacing="linspace", set_alpha_to_one=True, steps_offset=0),
}
STEPS = (50, 25, 10, 7)


def main() -> None:
    tables = []
    for name, cfg in SCHEDULERS.items():
        scheduler = make_scheduler(cfg)
        ac = scheduler.alphas_cumprod
        for steps in STEPS:
            sch = ddim_schedule(scheduler, steps)
            tables.append({"scheduler": name, "settings": dataclasses.asdict(cfg), "steps": steps,
                           "timesteps": sch.timesteps.tolist(), "coef": sch.coef.tolist()})
        tables[-1]["alphas_cumprod_at"] = {str(t): float(ac[t]) for t in (0, 1, 250, 500, 999)}
    plans = []
    for steps in (50, 25, 10, 7, 2):
        for renoise in ("next", "current"):
            s = SamplerConfig(steps=steps, renoise=renoise)
            p = stage_plan(s)
            plans.append({"steps": steps, "renoise": renoise, "latent_start": p.latent_start,
                          "pixel_start": p.pixel_start, "noise_draws": noise_draws(s)})
    out = Path(__file__).with_name("ddim_expected.json")
    out.write_text(json.dumps({"tables": tables, "stage_plans": plans}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
