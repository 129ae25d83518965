"""Scale-out of the bulk job: deterministic shards (``--shard K/N``) and Ray Data (``--ray``).

Sample i depends on (seed, i) alone, and within a chunk of ``batch_size`` consecutive
indices the batched diffusion is computed together: so work is split by whole chunks,
never inside one, and any split makes the same bytes as one process.

- Shards are **interleaved by chunk**: chunk c (indices c*B .. c*B+B-1) belongs to shard
  c mod N. A larger ``--num`` adds chunks to every shard, and neighbouring chunks (of
  similar cost) spread over the shards. Shard K appends to its own manifest,
  ``manifest.shard-K-of-N.jsonl``, and locks ``.adabldm.shard-K-of-N.lock``; every run
  reads all manifests of the folder, merged, to know what is finished.
- Ray Data: the driver holds the folder's lock, opens the run as the single process does
  and sends the unfinished chunks to a pool of actors (``map_batches`` with a class, an
  ``ActorPoolStrategy``), each holding one loaded pipeline; an actor writes a sample's
  files atomically into the shared ``--out`` and returns its manifest line, which the
  driver appends (the commit point): one writer per manifest.
``ray`` is imported only in :func:`run_ray` (``pip install adabldm[ray]``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from adabldm_core.io import InputError, append_line, folder_lock

from . import job
from .job import JobConfig, JobReport, Layout, chunks_of

log = logging.getLogger("adabldm")


# ---------------------------------------------------------------------------------------
# Shard arithmetic (pure)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count): the chunks c with c % count == index."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard {self.index}/{self.count}: expected K/N with N >= 1 and 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'K/N' -> Shard(K, N); ValueError naming the value otherwise."""
        try:
            k, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4 (shard 0 of 4)") from None
        return cls(k, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def chunks(self, num: int, batch_size: int) -> list[range]:
        """This shard's chunks of 0..num-1, interleaved: chunk c goes to shard c % count."""
        return chunks_of(num, batch_size)[self.index::self.count]

    def indices(self, num: int, batch_size: int) -> list[int]:
        return [i for chunk in self.chunks(num, batch_size) for i in chunk]

    @property
    def manifest_name(self) -> str:
        return f"manifest.shard-{self.index}-of-{self.count}.jsonl"

    @property
    def lock_name(self) -> str:
        return f".adabldm.shard-{self.index}-of-{self.count}.lock"


@dataclass(frozen=True)
class RunCheck:
    """What the manifests of a folder say about samples 0..num-1 of one defect type."""

    num: int
    missing: tuple[int, ...]  # no manifest line with its files on disk
    duplicated: dict[int, int]  # index -> number of lines (more than one), over all manifests

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated

    def message(self, out: Path, defect: str) -> str:
        if self.ok:
            return f"{out}: samples 0..{self.num - 1} of {defect!r} complete, each once"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_ranges(self.missing)}")
        if self.duplicated:
            parts.append(f"{len(self.duplicated)} duplicated: "
                         + ", ".join(f"{i} ({n} lines)" for i, n in sorted(self.duplicated.items())))
        return f"{out}, defect {defect!r}, samples 0..{self.num - 1}: " + "; ".join(parts)


def check_run(out: Path, category: str, defect: str, num: int) -> RunCheck:
    """Merge every manifest of ``out`` and name the missing and duplicated indices of 0..num-1.

    A line counts when it parses, is of ``defect`` and its image and mask are on disk."""
    layout, lines = Layout(Path(out), category, defect), Counter()
    for path in layout.manifests():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                i = int(entry["index"])
            except (ValueError, KeyError, TypeError):
                continue
            if entry.get("defect", defect) == defect and layout.complete(i):
                lines[i] += 1
    missing = tuple(i for i in range(num) if not lines[i])
    return RunCheck(num, missing, {i: n for i, n in lines.items() if n > 1})


def _ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    runs, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            runs.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(runs)


# ---------------------------------------------------------------------------------------
# Ray Data


class SampleMaker:
    """A Ray Data actor: one loaded pipeline, making whole chunks.

    ``__call__`` takes a batch of chunks (columns ``start``, ``stop``, ``todo``: the
    comma-separated unfinished indices) and returns one row per sample of them: ``index``,
    ``line`` (its manifest line; its files are written) and ``error`` (why it failed, or '').
    """

    def __init__(self, cfg: JobConfig, run_key: str, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)  # the bytes of CPU kernels depend on the thread count
        skipped: list[str] = []
        self.cfg, gen = cfg, cfg.generation
        self.images = job.load_ok_images(cfg, skipped)
        masks = job.load_mask_source(cfg, skipped)
        self.sources = job.mask_sources(self.images, masks, gen.resolution)
        self.pipeline, identity = job.make_pipeline(cfg)
        self.pipeline.__enter__()
        self.settings = gen.to_dict()
        self.run_key = job.run_record(cfg, identity, self.images, masks, self.sources)["run_key"]
        if self.run_key != run_key:  # this worker sees other inputs or weights than the driver
            self.pipeline.close()
            raise InputError(f"a Ray worker's run key is {self.run_key}, the driver's {run_key}: the worker reads"
                             " other inputs or model weights (give every node the same files)")
        self.layout = Layout.of(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {"index": [], "line": [], "error": []}
        for start, stop, todo in zip(batch["start"], batch["stop"], batch["todo"]):
            wanted = {int(i) for i in str(todo).split(",")}
            report = JobReport(self.cfg.out, 0)
            plans = job._plan_chunk(range(int(start), int(stop)), self.cfg.generation, self.images, self.sources,
                                    report)
            for i in sorted(wanted & set(report.failed)):
                rows["index"].append(i), rows["line"].append(""), rows["error"].append(report.failed[i])
            wanted -= set(report.failed)
            if not wanted:
                continue
            for sample in self.pipeline.run(plans, finish=lambda p: p.index in wanted):
                sample, gate = job.gated(self.cfg, self.pipeline, job.with_quality(sample), self.images, self.sources)
                line = job.write_sample_files(self.layout, sample, self.run_key, self.settings, self.cfg.batch_size,
                                              gate)
                rows["index"].append(sample.plan.index), rows["line"].append(line), rows["error"].append("")
        return {"index": np.array(rows["index"], dtype=np.int64), "line": np.array(rows["line"], dtype=object),
                "error": np.array(rows["error"], dtype=object)}

    def __del__(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close()


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: ray.init()'s own choice (RAY_ADDRESS, else a local Ray)
    actors: int | None = None  # None: one per GPU (cuda), or per ``cpus_per_actor`` CPUs of the cluster
    cpus_per_actor: int = 1  # on CPUs: Ray's num_cpus and the actor's torch threads


def model_identity(cfg: JobConfig) -> str:
    """The weights hash of the job's model, as the actors' make_pipeline computes it (the
    driver needs it for the run key): a bundle's from its manifest, else the models loaded
    on the driver's CPU once."""
    if cfg.bundle is not None:
        from .bundle import Bundle

        return Bundle.open(cfg.bundle).identity
    pipeline, identity = job.make_pipeline(dataclasses.replace(cfg, device="cpu"))  # the actors' model loading
    pipeline.close()
    return identity


def run_ray(cfg: JobConfig, ray_cfg: RayConfig = RayConfig(), progress: bool = True) -> JobReport:
    """The bulk job over Ray Data: the same files, manifest, report and exit codes as
    ``run_job(cfg)``. The driver holds the folder's lock; a killed job resumes from disk."""
    with folder_lock(cfg.out):
        report = JobReport(cfg.out, cfg.num)
        images = job.load_ok_images(cfg, report.skipped_inputs)
        masks = job.load_mask_source(cfg, report.skipped_inputs)
        sources = job.mask_sources(images, masks, cfg.generation.resolution)
        record = job.run_record(cfg, model_identity(cfg), images, masks, sources)
        layout = Layout.of(cfg)
        done = job.open_run(layout, record, cfg.batch_size, images)
        report.resumed = len(done & set(range(cfg.num)))
        work = [{"start": c.start, "stop": c.stop, "todo": ",".join(str(i) for i in c if i not in done)}
                for c in chunks_of(cfg.num, cfg.batch_size)]
        work = [w for w in work if w["todo"]]
        try:
            if work:
                _run_on_ray(cfg, ray_cfg, record["run_key"], work, layout, report, progress)
        finally:
            job.write_contact_sheet(layout, cfg.contact_rows)
    return report


def _run_on_ray(cfg: JobConfig, ray_cfg: RayConfig, run_key: str, work: list[dict], layout: Layout,
                report: JobReport, progress: bool) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_cfg.address, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours below counts samples
    on_gpu = cfg.device.startswith("cuda")
    resources = ray.cluster_resources()
    per_actor = {"num_gpus": 1} if on_gpu else {"num_cpus": ray_cfg.cpus_per_actor}
    available = resources.get("GPU", 0) if on_gpu else resources.get("CPU", 1) // ray_cfg.cpus_per_actor
    actors = max(1, min(ray_cfg.actors or int(available), len(work)))
    ds = ray.data.from_items(work, override_num_blocks=len(work)).map_batches(
        SampleMaker,
        fn_constructor_kwargs={"cfg": cfg, "run_key": run_key, "threads": None if on_gpu else ray_cfg.cpus_per_actor},
        batch_size=1,  # one chunk per call: a chunk is the unit of work and of retry
        compute=ray.data.ActorPoolStrategy(size=actors),
        **per_actor,
    )
    seen: set[int] = set()
    with job.sample_progress(report, cfg.num, progress) as bar:
        bar.set_postfix_str(f"{actors} Ray actor(s)")
        for row in ds.iter_rows():
            if int(row["index"]) not in seen:  # a chunk Ray ran again after a lost actor: once
                seen.add(int(row["index"]))
                _commit(layout, row, report)
                bar.update(1)


def _commit(layout: Layout, row: dict, report: JobReport) -> None:
    """Record one actor's row: its manifest line appended (the sample is then finished)."""
    i = int(row["index"])
    if row["error"]:
        report.failed[i] = str(row["error"])
        log.warning("sample %04d skipped: %s", i, row["error"])
        return
    append_line(layout.manifest, str(row["line"]))
    entry = json.loads(row["line"])
    report.generated += 1
    report.quality.append(entry["quality"])
    report.count_gate(i, entry.get("gate"))
    if entry["placement"].get("thin_resampled"):
        report.thin_resampled.append(i)
