"""licbench check: a baseline from a real run passes, a run with a worse codec setting fails and
names the codec, and every check leaves a history line that the report draws."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from licbench.cli import main
from licbench.report.check import bd_rates, resolve_anchor
from licbench.store import OK
from test_report import Page, expected_bd, make_crops, results, run_codecs

RATES = ("jpeg=10,30,60,90", "webp=5,30,70,92", "webp:method=0=5,30,70,92")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """Run "base" (jpeg, webp), run "worse" (jpeg, webp with its fastest, least efficient
    method) and run "partial" (jpeg only) over two Kodak crops."""
    root = tmp_path_factory.mktemp("check")
    folder = make_crops(root / "crops")
    db = root / "results.sqlite"
    for run, codecs in (("base", "jpeg,webp"), ("worse", "jpeg,webp:method=0"), ("partial", "jpeg")):
        assert run_codecs(db, run, folder, codecs, tuple(r for r in RATES if r.rpartition("=")[0] in codecs.split(","))) == 0
    return SimpleNamespace(root=root, db=db)


def check(capsys, db: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--db", str(db), "check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_baseline_from_a_run_then_the_same_run_passes(runs, tmp_path, capsys):
    baseline = tmp_path / "baseline" / "small.json"
    code, out, _ = check(capsys, runs.db, "--baseline", str(baseline), "--update", "--run", "base")
    assert code == 0 and f"baseline written to {baseline}" in out
    saved = json.loads(baseline.read_text())
    webp = expected_bd(results(runs.db, "base"), "jpeg", "psnr_rgb", "average-curve")["webp"]
    assert saved["run"] == "base" and saved["dataset"] == "crops" and saved["anchor"] == "jpeg"
    assert saved["metric"] == "psnr_rgb" and saved["method"] == "pchip" and saved["tolerance"] == 0.5
    assert saved["bd_rate"] == {"webp": round(webp, 4)}
    assert saved["created"] and saved["git_revision"]

    code, out, _ = check(capsys, runs.db, "--baseline", str(baseline))  # the run named in the baseline
    assert code == 0
    assert f"OK webp: BD-rate {webp:+.2f} % vs baseline {webp:+.2f} %" in out
    lines = history(baseline.with_name("small.history.jsonl"))
    assert [(e["run"], e["passed"], e["updated"]) for e in lines] == [("base", True, True), ("base", True, False)]
    assert lines[-1]["bd_rate"] == {"webp": round(webp, 4)} and lines[-1]["git_revision"] == saved["git_revision"]


def test_worse_codec_setting_is_a_regression(runs, tmp_path, capsys):
    baseline = tmp_path / "base.json"
    assert check(capsys, runs.db, "--baseline", str(baseline), "--update", "--run", "base")[0] == 0
    before = json.loads(baseline.read_text())["bd_rate"]["webp"]
    after = expected_bd(results(runs.db, "worse"), "jpeg", "psnr_rgb", "average-curve")["webp:method=0"]
    assert after - before > 5  # method 0 costs bits: a real regression to catch

    code, out, _ = check(capsys, runs.db, "--baseline", str(baseline), "--run", "worse")
    assert code == 1
    assert (
        f"REGRESSION webp (run as webp:method=0): BD-rate {after:+.2f} % vs baseline {before:+.2f} % (tolerance 0.5)"
        in out
    )
    last = history(tmp_path / "base.history.jsonl")[-1]
    assert last["run"] == "worse" and last["passed"] is False and last["regressions"] == ["webp"]

    # The same difference within a wider tolerance passes.
    code, out, _ = check(capsys, runs.db, "--baseline", str(baseline), "--run", "worse", "--tolerance", "100")
    assert code == 0 and "OK webp (run as webp:method=0)" in out
    assert len(history(tmp_path / "base.history.jsonl")) == 3


def test_a_baseline_can_be_made_on_another_anchor(runs, tmp_path, capsys):
    baseline = tmp_path / "webp-anchored.json"
    code, out, _ = check(capsys, runs.db, "--baseline", str(baseline), "--update", "--run", "base", "--anchor", "webp")
    assert code == 0, out
    saved = json.loads(baseline.read_text())
    jpeg = expected_bd(results(runs.db, "base"), "webp", "psnr_rgb", "average-curve")["jpeg"]
    assert saved["anchor"] == "webp" and saved["bd_rate"] == {"jpeg": round(jpeg, 4)}
    code, out, _ = check(capsys, runs.db, "--baseline", str(baseline))  # keeps the baseline's anchor
    assert code == 0 and "anchor webp" in out and f"OK jpeg: BD-rate {jpeg:+.2f} %" in out
    code, _, err = check(capsys, runs.db, "--baseline", str(baseline), "--anchor", "jpeg")
    assert code == 2 and "--anchor goes with --update" in err and len(err.strip().splitlines()) == 1


def test_missing_codec_is_a_regression(runs, tmp_path, capsys):
    baseline = tmp_path / "base.json"
    history_file = tmp_path / "elsewhere" / "h.jsonl"
    assert check(capsys, runs.db, "--baseline", str(baseline), "--update", "--run", "base", "--history", str(history_file))[0] == 0
    code, out, _ = check(capsys, runs.db, "--baseline", str(baseline), "--run", "partial", "--history", str(history_file))
    assert code == 1 and "REGRESSION webp: not in the run" in out
    assert [e["passed"] for e in history(history_file)] == [True, False]
    assert not (tmp_path / "base.history.jsonl").exists()


def test_bad_baselines_are_one_line_errors(runs, tmp_path, capsys):
    missing = tmp_path / "missing.json"
    code, _, err = check(capsys, runs.db, "--baseline", str(missing))
    assert code == 2 and f"baseline {missing} does not exist" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.json"
    broken.write_text('{"run": "base", ')
    code, _, err = check(capsys, runs.db, "--baseline", str(broken))
    assert code == 2 and f"baseline {broken}: cannot read it" in err and len(err.strip().splitlines()) == 1
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text('{"run": "base", "dataset": "crops"}')
    code, _, err = check(capsys, runs.db, "--baseline", str(incomplete))
    assert code == 2 and "missing key(s) anchor, bd_rate" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"run": "base", "dataset": "kodak", "anchor": "jpeg", "bd_rate": {}}))
    code, _, err = check(capsys, runs.db, "--baseline", str(other))
    assert code == 2 and "is on dataset 'crops' but baseline" in err


def test_report_draws_the_check_history(runs, capsys):
    # Baselines live in <results folder>/baseline/, where the report looks for their histories.
    baseline = runs.db.parent / "baseline" / "small.json"
    assert check(capsys, runs.db, "--baseline", str(baseline), "--update", "--run", "base")[0] == 0
    assert check(capsys, runs.db, "--baseline", str(baseline))[0] == 0
    out = runs.root / "report"
    assert main(["--db", str(runs.db), "report", "base", "--output", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert 'id="history"' in html
    assert "2 <code>licbench check</code> run(s) against jpeg on psnr_rgb; the last one passed" in html
    assert any(image.get("alt") == "BD-rate history" for image in Page(html).images)
    # A run without checks gets no history section.
    assert main(["--db", str(runs.db), "report", "partial", "--output", str(runs.root / "partial")]) == 0
    assert 'id="history"' not in (runs.root / "partial" / "index.html").read_text()


def test_bd_against_a_published_curve_notes_a_run_over_part_of_its_dataset():
    """The published curve averages all 24 Kodak images: a run over 3 of them is noted as indicative
    only, with its value kept; a run over all 24 is not noted."""

    def bd_against_vtm(images: int) -> pd.Series:
        frame = pd.DataFrame([
            {"codec": "jpeg", "image": f"kodim{image:02d}.png", "rate": rate, "status": OK,
             "bpp": 0.1 * (rate + 1) * (1 + image / 100), "psnr_rgb": 27.0 + 2 * rate}
            for image in range(1, images + 1) for rate in range(4)
        ])  # fmt: skip
        return bd_rates(frame, resolve_anchor(frame, "kodak", "published:vtm-18.0")).set_index("codec").loc["jpeg"]

    part, whole = bd_against_vtm(3), bd_against_vtm(24)
    assert part["note"].endswith("3 of the 24 kodak images against the published average of all 24: indicative only")
    assert "kodak images" not in whole["note"]
    assert np.isfinite(part["bd_rate"]) and np.isfinite(whole["bd_rate"])
