from __future__ import annotations

import pytest

from adabldm_export.bundle import ExportConfig, export_bundle


@pytest.fixture(scope="session")
def bundle_dir(tiny, tmp_path_factory):
    """The tiny model exported once for the whole session (batch sizes 1 and 4)."""
    out = tmp_path_factory.mktemp("bundle")
    export_bundle(tiny, ExportConfig(out=out, batch_sizes=(1, 4), capture_steps=6, force=True))
    return out
