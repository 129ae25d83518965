from __future__ import annotations

import adabldm_export.bundle as bundle_mod
import pytest
from adabldm_export.bundle import ExportConfig, export_bundle
from PIL import Image


@pytest.fixture(scope="session")
def ok_image_files(tmp_path_factory):
    """Two user OK images (PNG files), as ``--ok-images`` would list them."""
    from skimage import data

    folder = tmp_path_factory.mktemp("ok")
    Image.fromarray(data.brick()).save(folder / "a_brick.png")
    Image.fromarray(data.gravel()).resize((300, 280)).save(folder / "b_gravel.png")
    return sorted(folder.iterdir())


@pytest.fixture(scope="session")
def calib_export(tiny, tmp_path_factory, ok_image_files):
    """The tiny model exported with a capture of one user image, batch sizes (1, 2).

    Records every feed the export validation compares, to check the captured loader's
    feeds are among them. Returns (bundle folder, {network: [feeds compared]}).
    """
    out = tmp_path_factory.mktemp("calib_bundle")
    compared: dict[str, list[dict]] = {}
    real_compare = bundle_mod.compare

    def recording_compare(engine, reference, feeds):
        compared.setdefault(engine.spec.name, []).extend(feeds)
        return real_compare(engine, reference, feeds)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle_mod, "compare", recording_compare)
        export_bundle(tiny, ExportConfig(out=out, batch_sizes=(1, 2), capture_steps=5, simplify=False,
                                         ok_images=(str(ok_image_files[0]),), force=True))
    return out, compared


@pytest.fixture(scope="session")
def calib_bundle(calib_export):
    return calib_export[0]
