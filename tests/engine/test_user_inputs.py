"""adabldm-run with a user's own inputs and option values: each bad one is a clear error
with the documented exit code, and nothing is written for a usage error."""
from __future__ import annotations

import pytest
from adabldm_engine.cli import main
from click.testing import CliRunner

from adabldm_ref.config import AdaptConfig, MaskConfig, SamplerConfig


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("option, value", [
    ("--guidance", "nan"), ("--control-scale", "inf"), ("--rotate", "nan"), ("--rotate", "inf"),
    ("--adapt-lr", "inf"), ("--preservation", "nan"), ("--scale-range", "inf,inf"), ("--scale-range", "1,inf"),
])
def test_non_finite_option_is_a_usage_error_that_writes_nothing(tmp_path, option, value):
    """nan passes every range check and inf passes the lower bounds: they used to reach the
    job, which wrote its run record and then crashed (OverflowError drawing a rotation) or
    stopped on a record that is not JSON, exit 1."""
    result = run_cli("--batch", "--model", "tiny", "--out", tmp_path / "out", option, value)
    assert result.exit_code == 2, result.output
    assert "finite" in result.output and value.split(",")[-1] in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", [
    lambda: SamplerConfig(guidance=float("nan")),
    lambda: SamplerConfig(control_scale=float("-inf")),
    lambda: MaskConfig(rotate=float("inf")),
    lambda: MaskConfig(scale=(0.5, float("nan"))),
    lambda: MaskConfig(scale=(1.2, 0.9)),
    lambda: MaskConfig(rotate=-1.0),
    lambda: AdaptConfig(lr=float("inf")),
    lambda: AdaptConfig(preservation=float("nan")),
])
def test_configurations_refuse_values_that_would_fail_late(make):
    with pytest.raises(ValueError, match="expected"):
        make()
