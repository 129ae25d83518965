"""adabldm_engine.gate and the gated job: forced failures are made again from derived seeds,
deterministically and whatever the shards; a gate every sample passes keeps the bytes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from adabldm_engine import job
from adabldm_engine.gate import GateConfig, attempt_base_seed
from adabldm_engine.job import EXIT_OK, run_job
from adabldm_engine.scaleout import Shard

from adabldm_ref.pipeline import sample_seed

NEVER = GateConfig(min_bg_psnr=99.0, min_defect_strength=0.0, max_attempts=2)  # the tiny model: ~15 dB
ALWAYS = GateConfig(min_bg_psnr=-100.0, min_defect_strength=-1.0)


def lines(out: Path) -> dict[int, dict]:
    return {e["index"]: e for p in sorted(out.glob("manifest*.jsonl"))
            for e in map(json.loads, p.read_text().splitlines())}


def test_failures_name_each_failed_bound_and_let_nan_pass():
    gate = GateConfig(min_bg_psnr=20.0, min_defect_strength=2.0, max_leakage=5.0, max_seam=10.0)
    assert gate.failures({"bg_psnr": 25.0, "defect_strength": 3.0, "leakage": 1.0, "seam": 9.0}) == []
    assert gate.failures({"bg_psnr": 19.5, "defect_strength": 1.25, "leakage": 6.0, "seam": 11.0}) == [
        "bg_psnr 19.5 < 20", "defect_strength 1.25 < 2", "leakage 6 > 5", "seam 11 > 10"]
    # nothing to measure (nan, or None in the manifest), an untouched background (inf): pass
    assert gate.failures({"bg_psnr": math.nan, "defect_strength": None, "leakage": math.nan}) == []
    assert gate.failures({"bg_psnr": math.inf, "defect_strength": 2.0}) == []
    assert GateConfig().failures({"leakage": 1e9, "seam": 1e9}) == []  # leakage and seam off by default


def test_gate_config_refuses_unbounded_attempts_and_non_finite_bounds():
    with pytest.raises(ValueError, match="--max-attempts 0: expected 1 to 16"):
        GateConfig(max_attempts=0)
    with pytest.raises(ValueError, match="--max-attempts 17"):
        GateConfig(max_attempts=17)
    with pytest.raises(ValueError, match="--min-bg-psnr nan: expected a finite number"):
        GateConfig(min_bg_psnr=math.nan)


def test_attempt_seeds_depend_on_seed_index_and_attempt_alone():
    assert attempt_base_seed(0, 5, 1) == attempt_base_seed(0, 5, 1)
    seeds = {attempt_base_seed(s, i, a) for s in (0, 1) for i in (0, 1, 2) for a in (1, 2, 3)}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(attempt_base_seed(0, 1, 1), 1) != sample_seed(0, 1)  # not attempt 0's seed
    with pytest.raises(ValueError, match="attempt 0 is the sample itself"):
        attempt_base_seed(0, 1, 0)


@pytest.fixture(scope="module")
def never_passing(tmp_path_factory):
    """(out, report) of 2 samples under a gate no sample passes (2 attempts each)."""
    from .conftest import tiny_generation, torch_threads

    out = tmp_path_factory.mktemp("never") / "out"
    with torch_threads(1):
        return out, run_job(job.JobConfig(out=out, num=2, generation=tiny_generation(), gate=NEVER), progress=False)


def test_a_sample_failing_every_attempt_keeps_the_last_flagged(never_passing, reference_run, sample_files):
    out, report = never_passing
    assert report.exit_code == EXIT_OK and report.regenerated == [0, 1] and report.gate_failed == [0, 1]
    ref_lines = lines(reference_run[0])
    for i, e in lines(out).items():
        gate = e["gate"]
        assert (gate["passed"], gate["kept"], [a["attempt"] for a in gate["attempts"]]) == (False, 1, [0, 1])
        first, second = gate["attempts"]
        assert first["seed"] == ref_lines[i]["seed"]  # attempt 0: the sample as made without the gate
        assert first["quality"] == {k: v for k, v in ref_lines[i]["quality"].items()}
        assert second["seed"] == sample_seed(attempt_base_seed(0, i, 1), i) == e["seed"]  # the kept one's
        assert second["quality"] == e["quality"] and second["failed"][0].startswith("bg_psnr")
    made, ref = sample_files(out), sample_files(reference_run[0])
    assert all(made[k] != ref[k] for k in made)  # the kept attempts' images and masks, not attempt 0's
    record = json.loads((out / "runs" / "defect.json").read_text())
    assert record["gate"] == NEVER.to_dict() and record["run_key"] != json.loads(
        (reference_run[0] / "runs" / "defect.json").read_text())["run_key"]


def test_the_gated_run_is_deterministic_and_shard_independent(never_passing, tmp_path, job_config, sample_files):
    out, _ = never_passing
    again = tmp_path / "again"
    for k in (1, 0):  # samples 1 then 0, each in its own process-like shard
        assert run_job(job_config(again, num=2, gate=NEVER), progress=False, shard=Shard(k, 2)).exit_code == EXIT_OK
    assert sample_files(again) == sample_files(out)
    strip = lambda e: {k: v for k, v in e.items() if k != "timings"}
    assert {i: strip(e) for i, e in lines(again).items()} == {i: strip(e) for i, e in lines(out).items()}


def test_a_forced_first_failure_is_made_again_and_passes(tmp_path, job_config, monkeypatch, reference_run):
    real, calls = GateConfig.failures, []

    def fail_first_call(self, quality):  # one sample: the first call judges its attempt 0
        calls.append(quality)
        return ["forced"] if len(calls) == 1 else real(self, quality)

    monkeypatch.setattr(GateConfig, "failures", fail_first_call)
    out = tmp_path / "out"
    report = run_job(job_config(out, num=1, gate=ALWAYS), progress=False)
    (e,) = lines(out).values()
    assert len(calls) == 2 and report.regenerated == [0] and report.gate_failed == []
    assert e["gate"]["passed"] and e["gate"]["kept"] == 1 and e["gate"]["attempts"][0]["failed"] == ["forced"]
    assert e["seed"] == sample_seed(attempt_base_seed(0, 0, 1), 0) != lines(reference_run[0])[0]["seed"]


def test_a_gate_every_sample_passes_keeps_the_bytes_of_the_job_without_it(reference_run, tmp_path, job_config,
                                                                          sample_files):
    ref_out, ref = reference_run
    out = tmp_path / "out"
    report = run_job(job_config(out, num=ref.total, gate=ALWAYS), progress=False)
    assert report.exit_code == EXIT_OK and not report.regenerated
    assert sample_files(out) == sample_files(ref_out)
    extras = lambda d: {p.name: p.read_bytes() for p in (d / "extra").rglob("*.png")}
    assert extras(out) == extras(ref_out)
    for e in lines(out).values():
        assert e["gate"] == {"passed": True, "kept": 0, "attempts": [
            {"attempt": 0, "seed": e["seed"], "mask_source": e["mask_source"], "quality": e["quality"], "failed": []}]}
    assert all("gate" not in e for e in lines(ref_out).values())  # without --gate: no gate record


def test_manifest_quality_holds_the_sample_figures(reference_run):
    for e in lines(reference_run[0]).values():
        q = e["quality"]
        assert {"bg_psnr", "bg_ssim", "defect_strength", "seam", "leakage", "bg_psnr_before", "bg_psnr_after"} <= set(q)
        assert q["bg_psnr"] == q["bg_psnr_after"] and -1 <= q["bg_ssim"] <= 1 and q["defect_strength"] > 0
