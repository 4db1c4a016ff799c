"""Published reference curves: the committed files, their loader and their importer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from licbench.bench.bd import bd_rate, ms_ssim_db
from licbench.published import (
    DATASETS,
    ENV_VAR,
    PublishedCurve,
    PublishedCurveNotFound,
    PublishedError,
    load_published,
    published_curves,
    published_dir,
    write_published,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "reference"
COMMITTED = REPO_ROOT / "results" / "published"


@pytest.fixture(autouse=True)
def _committed_curves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the repository's own files even if the caller's environment overrides the folder."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def _importer():
    spec = importlib.util.spec_from_file_location("import_published", REPO_ROOT / "bench" / "import_published.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_folder_is_results_published_next_to_the_package() -> None:
    assert published_dir() == COMMITTED


def test_every_curve_loads_with_increasing_bpp() -> None:
    curves = published_curves()
    assert len(curves) == len(list(COMMITTED.glob("*--*.json"))) >= 90
    for curve in curves:
        assert curve.dataset in DATASETS
        assert np.all(np.diff(curve.bpp) > 0), curve.id
        assert any(name in curve.metrics for name in ("psnr_rgb", "ms_ssim", "ms_ssim_db")), curve.id
        assert curve.provenance["source"] and curve.provenance["licence"], curve.id
    assert {curve.dataset for curve in curves} == set(DATASETS)


def test_importer_recreates_the_committed_files(tmp_path: Path) -> None:
    importer = _importer()
    written = importer.write_all(importer.import_all(REFERENCE), tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in COMMITTED.glob("*--*.json"))
    for path in written:
        assert json.loads(path.read_text()) == json.loads((COMMITTED / path.name).read_text()), path.name


def test_vtm18_curves_come_from_lossy_vae() -> None:
    for dataset in ("kodak", "tecnick", "clic2022-test"):
        curve = load_published("vtm-18.0", dataset)
        assert curve.bpp.size == 36
        assert "duanzhiihao/lossy-vae" in curve.provenance["source"]
        assert "4:4:4" in curve.provenance["notes"]
    kodak = load_published("vtm-18.0", "kodak")
    # Sorted by bpp from the source's high-to-low order: the best point is last.
    assert kodak.bpp[-1] == pytest.approx(2.821609497070313)
    assert kodak.metric("psnr_rgb")[-1] == pytest.approx(44.56865460677789)


def test_compressai_vtm_against_vtm18_bd_rate() -> None:
    anchor = load_published("vtm-18.0", "kodak")
    compressai_vtm = load_published("compressai-vtm", "kodak")
    assert "optimistic" in compressai_vtm.provenance["notes"]
    assert compressai_vtm.provenance["licence"] == "BSD-3-Clause-Clear"
    result = bd_rate(anchor.bpp, anchor.metric("psnr_rgb"), compressai_vtm.bpp, compressai_vtm.metric("psnr_rgb"))
    assert np.isfinite(result) and abs(result) < 10.0  # two VTM versions on the same images


def test_ms_ssim_db_is_derived_and_unknown_metrics_are_named() -> None:
    jpeg = load_published("compressai-jpeg", "kodak")
    assert np.allclose(jpeg.metric("ms_ssim_db"), ms_ssim_db(jpeg.metric("ms_ssim")))
    with pytest.raises(PublishedError, match=r"has no metric 'psnr_y'; it has bpp, .*psnr_rgb"):
        jpeg.metric("psnr_y")


def test_paper_ms_ssim_curves_of_mse_models_carry_a_caveat() -> None:
    assert "MSE-trained models" in load_published("compressai-paper-elic2022-ms-ssim", "kodak").provenance["notes"]
    genuine = load_published("compressai-paper-cheng2020-checkerboard-6m-ms-ssim", "kodak")
    assert "caveat" not in genuine.provenance["notes"]


def test_missing_curve_lists_available_ids() -> None:
    with pytest.raises(PublishedCurveNotFound, match=r"no published curve 'vtm-99' .*available: .*vtm-18\.0"):
        load_published("vtm-99", "tecnick")
    with pytest.raises(PublishedError, match="unknown dataset 'kodac'; known: kodak"):
        published_curves("kodac")


def test_environment_variable_overrides_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    curve = PublishedCurve("my-codec", "My codec", "kodak", {"bpp": [0.2, 0.5, 1.0], "psnr_rgb": [30.0, 33.0, 36.5]})
    write_published(curve, tmp_path)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert [c.id for c in published_curves()] == ["my-codec"]
    assert load_published("my-codec", "kodak").metric("psnr_rgb").tolist() == [30.0, 33.0, 36.5]


def test_malformed_files_give_errors_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    bad = {"id": "bad", "name": "Bad", "dataset": "kodak", "provenance": {}}
    bad["metrics"] = {"bpp": [0.1, 0.2], "psnr_rgb": [30.0]}
    (tmp_path / "kodak--bad.json").write_text(json.dumps(bad))
    with pytest.raises(PublishedError, match=r"kodak--bad\.json: .*'psnr_rgb' has 1 values but bpp has 2"):
        load_published("bad", "kodak")
    bad["metrics"] = {"bpp": [0.3, 0.2], "psnr_rgb": [30.0, 31.0]}
    (tmp_path / "kodak--bad.json").write_text(json.dumps(bad))
    with pytest.raises(PublishedError, match=r"kodak--bad\.json: .*bpp must be positive and strictly increasing"):
        published_curves("kodak")
    (tmp_path / "kodak--bad.json").write_text("{not json")
    with pytest.raises(PublishedError, match=r"kodak--bad\.json: "):
        published_curves()
