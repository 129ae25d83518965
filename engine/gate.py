"""The quality gate of the bulk job (``adabldm-run --gate``): thresholds on a sample's
figures (adabldm_core.metrics.sample_quality), and the seeds of its further attempts.

A sample whose figures fail a threshold is made again, from a seed derived from
(base seed, index, attempt) alone, up to ``max_attempts`` times in all; a sample that
never passes keeps its last attempt and is flagged (``gate.passed`` false in the
manifest). Attempt 0 is the sample as the job makes it without the gate (same seed, same
batch), so a sample that passes at once has the bytes of a run without ``--gate``.

Pure Python (numpy only inside :func:`attempt_base_seed`): the command line imports the
default thresholds from here, so they live in one place, to be re-measured when the model
or the adaptation changes (README, "Quality gate": how they were measured).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# Measured on the demo model, README main command (--steps 20 --adapt-iters 20), 8
# samples (README "Quality gate"): bg_psnr 28.2-29.1 dB on brick, 19.5 dB on gravel (the
# VAE's own reconstruction limit there, which no new seed changes), defect_strength
# 1.35-4.53. So the PSNR bound sits below gravel (it catches a background gone wrong, not a
# texture) and the strength bound fails the faintest sample of the 8 (a thin crack, 1.35).
DEFAULT_MIN_BG_PSNR = 18.0  # dB outside M against the source
DEFAULT_MIN_DEFECT_STRENGTH = 1.5  # mean change inside M / outside M
DEFAULT_MAX_ATTEMPTS = 3  # attempts in all (the first included)
MAX_ATTEMPTS_LIMIT = 16  # a bound on --max-attempts: each attempt costs a whole sample


@dataclass(frozen=True)
class GateConfig:
    # Each threshold is checked where its figure exists: a nan figure (its region is empty,
    # e.g. no background left) passes that check, since nothing can be measured.
    min_bg_psnr: float = DEFAULT_MIN_BG_PSNR  # the background must stay the source
    min_defect_strength: float = DEFAULT_MIN_DEFECT_STRENGTH  # the defect must stand out
    max_leakage: float | None = None  # gray levels beyond M dilated (None: not checked)
    max_seam: float | None = None  # RMS gradient of the change on M's border (None: not checked)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # attempts in all, bounded: each costs a sample

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"--max-attempts {self.max_attempts}: expected 1 to {MAX_ATTEMPTS_LIMIT}")
        for name in ("min_bg_psnr", "min_defect_strength", "max_leakage", "max_seam"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} {value}: expected a finite number")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def failures(self, quality: dict[str, float | None]) -> list[str]:
        """The checks ``quality`` (a sample's figures) fails, each as 'figure value < bound'."""
        checks = [("bg_psnr", self.min_bg_psnr, True), ("defect_strength", self.min_defect_strength, True),
                  ("leakage", self.max_leakage, False), ("seam", self.max_seam, False)]
        failed = []
        for key, bound, is_min in checks:
            value = quality.get(key)
            if bound is None or value is None or math.isnan(value):
                continue
            if (value < bound) if is_min else (value > bound):
                failed.append(f"{key} {value:.4g} {'<' if is_min else '>'} {bound:g}")
        return failed


def attempt_base_seed(base_seed: int, index: int, attempt: int) -> int:
    """The run seed whose sample ``index`` is attempt ``attempt`` (>= 1) of sample ``index``
    of a run seeded ``base_seed``: a 63-bit seed from SeedSequence([base_seed, index, attempt]).

    Attempt a of sample i is then made exactly as sample i of a run seeded by this value
    (its seed, mask draw and noise follow from it), so it depends on (base_seed, i, a) alone:
    on no shard, batch size or order."""
    if attempt < 1:
        raise ValueError(f"attempt {attempt}: attempt 0 is the sample itself (seed {base_seed})")
    import numpy as np

    state = np.random.SeedSequence([base_seed, index, attempt]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
