"""adabldm_engine.scaleout: shard arithmetic, shards and Ray Data against one process, byte for byte."""
from __future__ import annotations

import hashlib
import os
import json
from pathlib import Path

import adabldm_engine.job as job
import adabldm_engine.scaleout as scaleout
import pytest
from adabldm_engine.job import EXIT_INTERRUPTED, EXIT_OK, run_job
from adabldm_engine.scaleout import RayConfig, Shard, check_run

from .conftest import torch_threads, tiny_generation

NUM, BATCH = 5, 2  # chunks [0, 1], [2, 3], [4]: shard 0/2 makes 0, 1, 4; shard 1/2 makes 2, 3


def digests(out: Path) -> dict[str, str]:
    """sha256 of every PNG of the samples (images, masks, extras) by relative path."""
    files = [p for d in ("texture/train", "texture/test", "texture/ground_truth", "extra") for p in (out / d).rglob("*.png")]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def merged_manifest(out: Path) -> dict[int, dict]:
    """Index -> manifest entry without its timings, over every manifest of ``out``; asserts
    that no index has two lines."""
    entries = {}
    for path in sorted(out.glob("manifest*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            entry.pop("timings")
            assert entry["index"] not in entries, f"index {entry['index']} twice"
            entries[entry["index"]] = entry
    return entries


def assert_same_run(out: Path, reference: Path) -> None:
    assert digests(out) == digests(reference)
    assert merged_manifest(out) == merged_manifest(reference)
    assert check_run(out, "texture", "defect", NUM).ok


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The single-process job of NUM samples at batch size BATCH (one torch thread). Read only."""
    out = tmp_path_factory.mktemp("whole") / "out"
    with torch_threads(1):
        report = run_job(config(out), progress=False)
    assert report.exit_code == EXIT_OK and report.generated == NUM
    return out


def config(out: Path, num: int = NUM) -> job.JobConfig:
    return job.JobConfig(out=Path(out), num=num, generation=tiny_generation(), batch_size=BATCH, model="tiny")


def interrupt_after(monkeypatch, module, name: str, calls: int) -> None:
    """Let ``module.<name>`` run ``calls`` times, then raise KeyboardInterrupt (a kill at that point)."""
    real, count = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        if count[0] == calls:
            raise KeyboardInterrupt
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


# ---------------------------------------------------------------------------------------
# Shard arithmetic


def test_shard_parse_and_names():
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    assert Shard(1, 4).manifest_name == "manifest.shard-1-of-4.jsonl"
    assert Shard(1, 4).lock_name == ".adabldm.shard-1-of-4.lock"
    for bad in ("4/4", "-1/2", "0/0", "1", "a/b", "1/2/3"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)


def test_shards_are_interleaved_whole_chunks():
    assert Shard(0, 2).indices(NUM, BATCH) == [0, 1, 4] and Shard(1, 2).indices(NUM, BATCH) == [2, 3]
    assert Shard(2, 3).indices(10, 3) == [6, 7, 8]
    for num in range(1, 12):
        for batch in (1, 2, 3, 5):
            chunks = job.chunks_of(num, batch)
            for count in (1, 2, 3, 7):
                parts = [Shard(k, count).chunks(num, batch) for k in range(count)]
                assert sorted((c for p in parts for c in p), key=lambda c: c.start) == chunks  # whole chunks, once
                assert sorted(i for p in parts for c in p for i in c) == list(range(num))


def test_check_names_missing_and_duplicated(whole_run, copy_of):
    out = copy_of(whole_run)
    assert check_run(out, "texture", "defect", NUM).ok and "complete" in check_run(out, "texture", "defect", NUM).message(out, "defect")
    check = check_run(out, "texture", "defect", 8)
    assert check.missing == (5, 6, 7) and "3 missing: 5-7" in check.message(out, "defect")
    (out / "texture" / "test" / "defect" / "0001.png").unlink()
    line = [s for s in (out / "manifest.jsonl").read_text().splitlines() if json.loads(s)["index"] == 3][0]
    (out / "manifest.shard-0-of-2.jsonl").write_text(line + "\n")
    check = check_run(out, "texture", "defect", NUM)
    assert check.missing == (1,) and check.duplicated == {3: 2}
    assert "1 missing: 1; 1 duplicated: 3 (2 lines)" in check.message(out, "defect")


# ---------------------------------------------------------------------------------------
# Shards into one folder


def test_shards_together_equal_the_single_process_job(whole_run, tmp_path):
    out = tmp_path / "out"
    reports = [run_job(config(out), progress=False, shard=Shard(k, 2)) for k in (1, 0)]
    assert [(r.total, r.generated, r.exit_code) for r in reports] == [(2, 2, EXIT_OK), (3, 3, EXIT_OK)]
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == [
        "manifest.shard-0-of-2.jsonl", "manifest.shard-1-of-2.jsonl"]  # one writer per file
    assert not list(out.glob(".adabldm*.lock"))
    assert_same_run(out, whole_run)
    shard1 = [json.loads(s)["index"] for s in (out / "manifest.shard-1-of-2.jsonl").read_text().splitlines()]
    assert shard1 == [2, 3]


def test_killed_shard_rerun_loses_and_duplicates_nothing(whole_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    interrupt_after(monkeypatch, job, "write_sample", calls=1)  # killed after sample 0's line
    report = run_job(config(out), progress=False, shard=Shard(0, 2))
    assert report.exit_code == EXIT_INTERRUPTED and report.generated == 1
    monkeypatch.undo()
    assert check_run(out, "texture", "defect", NUM).missing == (1, 2, 3, 4)
    report = run_job(config(out), progress=False, shard=Shard(0, 2))
    assert (report.resumed, report.generated) == (1, 2)
    run_job(config(out), progress=False, shard=Shard(1, 2))
    assert_same_run(out, whole_run)


def test_a_single_process_rerun_finishes_what_shards_left(whole_run, tmp_path):
    """The manifests are merged on read: a whole-job run after shard 1 makes only the rest."""
    out = tmp_path / "out"
    run_job(config(out), progress=False, shard=Shard(1, 2))
    report = run_job(config(out), progress=False)
    assert (report.resumed, report.generated) == (2, 3)
    assert_same_run(out, whole_run)


# ---------------------------------------------------------------------------------------
# Ray Data on a local Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install adabldm[ray])")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_job_equals_the_single_process_job(local_ray, whole_run, tmp_path):
    out = tmp_path / "out"
    report = scaleout.run_ray(config(out), RayConfig(actors=2), progress=False)
    assert (report.total, report.generated, report.resumed, report.exit_code) == (NUM, NUM, 0, EXIT_OK)
    assert [p.name for p in out.glob("manifest*.jsonl")] == ["manifest.jsonl"]  # the driver's
    assert_same_run(out, whole_run)
    sheet = "contact_sheet_defect.png"
    assert (out / sheet).read_bytes() == (whole_run / sheet).read_bytes()


def test_killed_ray_job_rerun_loses_and_duplicates_nothing(local_ray, whole_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    interrupt_after(monkeypatch, scaleout, "_commit", calls=2)  # the driver dies after 2 lines
    report = scaleout.run_ray(config(out), RayConfig(actors=2), progress=False)
    assert report.exit_code == EXIT_INTERRUPTED and report.generated == 2
    monkeypatch.undo()
    report = scaleout.run_ray(config(out), RayConfig(actors=2), progress=False)
    assert (report.resumed, report.generated, report.exit_code) == (2, NUM - 2, EXIT_OK)
    assert_same_run(out, whole_run)


def test_gated_ray_job_equals_the_gated_single_process_job(local_ray, tmp_path):
    """The gate's attempts depend on (seed, i, a) alone: Ray's actors make the same ones."""
    import dataclasses

    from adabldm_engine.gate import GateConfig

    gate = GateConfig(min_bg_psnr=99.0, max_attempts=2)  # every sample made twice
    cfg = lambda out: dataclasses.replace(config(out, num=2), gate=gate)
    with torch_threads(1):
        single = run_job(cfg(tmp_path / "single"), progress=False)
    report = scaleout.run_ray(cfg(tmp_path / "ray"), RayConfig(actors=2), progress=False)
    assert report.regenerated == single.regenerated == [0, 1] and sorted(report.gate_failed) == [0, 1]
    assert digests(tmp_path / "ray") == digests(tmp_path / "single")
    assert merged_manifest(tmp_path / "ray") == merged_manifest(tmp_path / "single")


# ---------------------------------------------------------------------------------------
# Command line


def cli(*args):
    from adabldm_engine.cli import main
    from click.testing import CliRunner

    return CliRunner().invoke(main, ["--batch", "--model", "tiny", *map(str, args)])


def test_shards_and_check_from_the_command_line(whole_run, tmp_path, tiny_args):
    out, common = tmp_path / "out", ["--out", tmp_path / "out", "--num", NUM, "--batch-size", BATCH, *tiny_args]
    result = cli(*common, "--shard", "1/2")
    assert result.exit_code == 0, result.output
    assert "2/2 samples" in result.output
    result = cli(*common, "--check")
    assert result.exit_code == 1 and "3 missing: 0-1, 4" in result.output
    assert cli(*common, "--shard", "0/2").exit_code == 0
    result = cli(*common, "--check")
    assert result.exit_code == 0 and "complete, each once" in result.output
    assert_same_run(out, whole_run)


@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2"], "expected K/N with 0 <= K < N"),
    (["--shard", "one/two"], "expected K/N"),
    (["--shard", "0/2", "--ray"], "--shard and --ray: choose one"),
    (["--actors", "2"], "--actors 2: needs --ray"),
])
def test_scale_out_usage_errors_write_nothing(tmp_path, args, message):
    result = cli("--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_ray_missing_is_an_error_naming_the_extra(tmp_path, monkeypatch, tiny_args):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    result = cli("--out", tmp_path / "out", "--ray", "--num", 1, *tiny_args)
    assert result.exit_code == 1 and "pip install 'adabldm[ray]'" in result.output


def test_help_imports_neither_ray_nor_torch():
    import subprocess
    import sys

    code = ("import sys; from adabldm_engine.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print('ray' in sys.modules, 'torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--ray [ADDRESS]" in done.stdout and done.stderr.strip().endswith("False False")


def test_a_killed_actor_is_replaced_and_its_chunk_made_again(local_ray, whole_run, tmp_path, monkeypatch):
    marker = tmp_path / "died"

    class DyingOnce(scaleout.SampleMaker):  # defined here: Ray ships it by value
        def __call__(self, batch):
            if not marker.exists():  # the first call of any actor: the process dies mid-chunk
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(scaleout, "SampleMaker", DyingOnce)
    out = tmp_path / "out"
    report = scaleout.run_ray(config(out), RayConfig(actors=2), progress=False)
    assert marker.exists() and (report.generated, report.exit_code) == (NUM, EXIT_OK)
    assert_same_run(out, whole_run)


def test_a_killed_shard_process_and_its_rerun_lose_and_duplicate_nothing(whole_run, tmp_path, tiny_args):
    """SIGKILL of `adabldm-run --shard 0/2` once its first sample is committed, then the rerun."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    args = [sys.executable, "-m", "adabldm_engine.cli", "--batch", "--out", str(out), "--num", str(NUM),
            "--batch-size", str(BATCH), "--device", "cpu", "--model", "tiny", *tiny_args, "--shard", "0/2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as the reference run
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / Shard(0, 2).manifest_name
    deadline = time.monotonic() + 120
    while not (manifest.exists() and manifest.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    made = len(manifest.read_text().splitlines())
    assert proc.returncode == -signal.SIGKILL and 1 <= made < 3  # killed part-way (chunk [4] still to make)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(args[:-1] + ["1/2"], env=env, timeout=300).returncode == 0
    assert_same_run(out, whole_run)
