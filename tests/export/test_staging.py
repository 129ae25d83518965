"""adabldm-export never loses a bundle it did not replace: the export is staged beside --out
and moved in only once it passed (a failed, interrupted or refused --force export leaves
the old bundle working); a bad --resolution is a usage error with nothing written."""
from __future__ import annotations

import json

import pytest
from adabldm_engine.bundle import MANIFEST, Bundle
from adabldm_export.bundle import ExportConfig, export_bundle, staging_dir
from adabldm_export.cli import main
from click.testing import CliRunner

from adabldm_ref.models import build_tiny


def _fake_bundle(out):
    """What must survive: the manifest, a graph, and a folder the export does not write."""
    (out / "onnx").mkdir(parents=True)
    (out / MANIFEST).write_text('{"old": true}')
    (out / "onnx" / "unet_control.onnx").write_bytes(b"old graph")
    (out / "trt").mkdir()
    (out / "trt" / "engine.plan").write_bytes(b"plan")
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def small(out, **kw):
    return ExportConfig(out=out, resolution=64, batch_sizes=(1,), capture_steps=5, simplify=False, **kw)


def test_a_forced_export_that_fails_leaves_the_existing_bundle_as_it_was(tmp_path):
    out = tmp_path / "bundle"
    before = _fake_bundle(out)
    bad = tmp_path / "ok" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        export_bundle(build_tiny(), small(out, ok_images=(str(bad),), force=True))
    assert _files(out) == before
    assert not staging_dir(out).exists()
    new = tmp_path / "new"  # and a first export that fails leaves no folder behind
    with pytest.raises(ValueError, match="broken.png"):
        export_bundle(build_tiny(), small(new, ok_images=(str(bad),)))
    assert not new.exists()


def test_an_interrupted_export_leaves_the_bundle_then_a_rerun_replaces_it(tmp_path, monkeypatch):
    import adabldm_export.bundle as bundle_mod

    out = tmp_path / "bundle"
    before = _fake_bundle(out)
    real_export = bundle_mod.export_onnx
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C while the second graph is written
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(build_tiny(), small(out, force=True))
    assert _files(out) == before and not staging_dir(out).exists()

    monkeypatch.setattr(bundle_mod, "export_onnx", real_export)
    staging_dir(out).mkdir()  # leftovers of a killed export are cleared, not mixed in
    (staging_dir(out) / "stale.onnx").write_bytes(b"x")
    manifest = export_bundle(build_tiny(), small(out, force=True))
    assert manifest["resolution"] == 64 and json.loads((out / MANIFEST).read_text())["resolution"] == 64
    assert manifest["export_settings"]["out"] == str(out)
    assert (out / "trt" / "engine.plan").read_bytes() == b"plan"  # not the export's: kept
    assert not (out / "stale.onnx").exists() and not staging_dir(out).exists()
    Bundle.open(out).check(resolution=64)  # every file the manifest names is there, unmodified


def test_resolution_not_a_multiple_of_64_is_a_usage_error_with_nothing_written(tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["--model", "tiny", "--out", str(out), "--resolution", "100"])
    assert result.exit_code == 2, result.output
    assert "100: expected a positive multiple of 64" in result.output
    assert not out.exists()
    with pytest.raises(ValueError, match="resolution 100"):
        ExportConfig(out=out, resolution=100)


def test_a_second_export_into_the_same_out_is_refused_and_touches_nothing(tmp_path):
    """Two exports at once shared one staging folder, each deleting the other's graphs."""
    from adabldm_core.io import InputError, folder_lock
    from adabldm_export.bundle import EXPORT_LOCK

    out = tmp_path / "bundle"
    before = _fake_bundle(out)
    with folder_lock(out, EXPORT_LOCK):  # as the first export holds it
        with pytest.raises(InputError, match="in use by another run"):
            export_bundle(build_tiny(), small(out, force=True))
    assert _files(out) == before and not staging_dir(out).exists()
