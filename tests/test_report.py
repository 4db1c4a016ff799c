"""licbench report: real small runs rendered to one self-contained page, read back as HTML and
through headless Chromium (console errors, the DOM after the page's script ran, a screenshot)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import sqlite3
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED, kodak_image
from licbench.bench.bd import bd_table
from licbench.cli import main
from licbench.provenance import git_revision
from licbench.report.html import write_report
from licbench.store import OK, ResultStore

CODECS = "jpeg,webp,vvenc:preset=faster"
RATES = ("jpeg=10,30,60,90", "webp=5,30,70,92", "vvenc:preset=faster=28,33,38,43")
CROP_SIDE = 192  # above the 161 pixels MS-SSIM needs
METRICS = ("psnr_rgb", "psnr_y", "ms_ssim_db")
SECTION_IDS = {"psnr_rgb": "psnr-rgb", "psnr_y": "psnr-y", "ms_ssim_db": "ms-ssim"}


# --- helpers shared with test_check.py ---------------------------------------------------------


def make_crops(folder: Path, indices: tuple[int, ...] = (1, 23), side: int = CROP_SIDE) -> Path:
    """A folder dataset of the top-left squares of some Kodak images."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        Image.fromarray(kodak_image(index)[:side, :side]).save(folder / f"crop{index:02d}.png")
    return folder


def run_codecs(db: Path, run: str, dataset: Path | str, codecs: str, rates: tuple[str, ...], *extra: str) -> int:
    args = ["--db", str(db), "run", "--codecs", codecs, "--dataset", str(dataset), "--run", run, "--no-progress"]
    for rate in rates:
        args += ["--rates", rate]
    return main(args + list(extra))


def results(db: Path, run: str) -> pd.DataFrame:
    with ResultStore(db) as store:
        return store.results(run)


class Page(HTMLParser):
    """What the tests read from a report: references to other files, images, and tables."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.references: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.images: list[dict[str, str]] = []
        self.root: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}  # table id -> body rows of cell texts
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.references += [(tag, name, attributes[name]) for name in ("src", "href") if name in attributes]
        if tag == "html":
            self.root = attributes
        elif tag == "img":
            self.images.append(attributes)
        elif tag == "table":
            self._rows = self.tables.setdefault(attributes.get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._rows = None
        elif tag == "thead" and self._rows is not None:
            self._rows.clear()  # keep body rows only
        elif tag in ("td", "th") and self._cell is not None and self._rows:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def rows_by_first_cell(self, table_id: str) -> dict[str, list[str]]:
        return {row[0]: row for row in self.tables[table_id]}


def anchor_name(html: str) -> str:
    match = re.search(r'id="anchor-name">([^<]*)<', html)
    assert match, "the report does not name its anchor"
    return match.group(1)


def assert_self_contained(html: str, page: Page) -> None:
    external = [ref for ref in page.references if not ref[2].startswith(("data:", "#"))]
    assert not external, f"the report refers to other files: {external}"
    assert not re.search(r"<link\b|<script[^>]*\bsrc=|@import|url\(", html)
    assert all(image["src"].startswith("data:image/png;base64,") for image in page.images)


def decoded_image(data_uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))


def coloured_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels of saturated colour: the codecs' curves (the page's own colours are all greyish)."""
    spread = rgb.max(axis=-1).astype(int) - rgb.min(axis=-1).astype(int)
    return rgb[spread > 100]


def expected_bd(frame: pd.DataFrame, anchor: str, metric: str, aggregation: str) -> dict[str, float]:
    ok = frame[frame["status"] == OK]
    table = bd_table(ok, anchor, metric, "pchip", aggregation)
    return dict(zip(table["codec"], table["bd_rate"]))


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> SimpleNamespace:
    """Two Kodak crops and one broken PNG through jpeg, webp and vvenc; the report of that run."""
    root = tmp_path_factory.mktemp("report")
    folder = make_crops(root / "crops")
    (folder / "broken.png").write_bytes((SHARED / "data" / "kodak" / "kodim02.png").read_bytes()[:300])
    db = root / "results.sqlite"
    # The broken image fails every job (exit status 1); the others must all succeed.
    assert run_codecs(db, "small", folder, CODECS, RATES) == 1
    frame = results(db, "small")
    assert set(frame.loc[frame["status"] != OK, "image"]) == {"broken.png"}
    index = write_report(db, "small", None, root / "report")
    html = index.read_text()
    return SimpleNamespace(root=root, db=db, frame=frame, index=index, html=html, page=Page(html))


# --- tests -------------------------------------------------------------------------------------


def test_report_is_one_self_contained_file(small):
    assert small.index == small.root / "report" / "index.html"
    assert_self_contained(small.html, small.page)
    plots = [image for image in small.page.images if image.get("class") == "plot"]
    assert len(plots) == 3  # PSNR-RGB, PSNR-Y, MS-SSIM
    for plot in plots:
        assert len(coloured_pixels(decoded_image(plot["src"]))) > 500, f"{plot['alt']}: no curves drawn"


def test_report_header_anchor_and_notes(small):
    html = small.html
    assert "licbench report: small" in html
    assert "crops (3 images)" in html
    # A folder dataset has no published curves: the anchor is the run's first traditional codec.
    assert anchor_name(html) == "jpeg"
    assert "No published curve exists for this dataset" in html
    assert 'id="vvenc-note"' in html and "vvenc:preset=faster is VVenC with 4:2:0 chroma" in html
    assert "VTM 18.0 all-intra 4:4:4 anchor" in html


def test_bd_tables_hold_every_codec_with_the_bd_module_values(small):
    for metric in METRICS:
        for number, aggregation in enumerate(("average-curve", "per-image-mean"), start=1):
            rows = small.page.rows_by_first_cell(f"bd-{number}-{SECTION_IDS[metric]}")
            expected = expected_bd(small.frame, "jpeg", metric, aggregation)
            assert set(rows) == {"webp", "vvenc:preset=faster"} == set(expected)
            for codec, value in expected.items():
                assert np.isfinite(value)
                assert rows[codec][1] == f"{value:+.2f}", (metric, aggregation, codec)
    # WebP and VVC both beat baseline JPEG on PSNR by a wide margin
    psnr = small.page.rows_by_first_cell("bd-1-psnr-rgb")
    assert float(psnr["webp"][1]) < -10 and float(psnr["vvenc:preset=faster"][1]) < -10


def test_per_image_table_has_every_row_and_the_errors(small):
    table = small.page.tables["per-image-table"]
    frame = small.frame
    assert len(table) == len(frame) == 3 * (4 + 4 + 4)
    shown = {(row[0], row[1], float(row[2])): row for row in table}
    for record in frame.itertuples():
        row = shown[(record.image, record.codec, record.rate)]
        if record.status == OK:
            assert row[4] == f"{record.bpp:.4f}" and row[5] == f"{record.psnr_rgb:.2f}" and row[-1] == "ok"
        else:
            assert row[-1] == f"{record.status}: {record.error}"
            assert "broken.png" in row[-1]


def test_complexity_and_provenance(small):
    complexity = small.page.rows_by_first_cell("complexity")
    assert set(complexity) == {"jpeg", "webp", "vvenc:preset=faster"}
    ok = small.frame[small.frame["status"] == OK]
    for codec, row in complexity.items():
        assert row[1] == "traditional" and row[2] == "2"
        assert row[4] == f"{ok.loc[ok['codec'] == codec, 'encode_s'].median():.4f}"
    per_rate = small.page.tables["complexity-per-rate"]
    assert len(per_rate) == 12
    assert "&#34;subsampling&#34;: &#34;4:2:0&#34;" in small.html  # jpeg's exact settings, escaped
    assert "&#34;chroma&#34;: &#34;420&#34;" in small.html  # vvenc's colour pipeline


def test_timings_from_several_hosts_are_flagged(small, tmp_path):
    assert 'id="hosts-note"' not in small.html  # one machine ran every job
    db = tmp_path / "two-hosts.sqlite"
    shutil.copy(small.db, db)
    with sqlite3.connect(db) as conn:  # as if the webp jobs had run on another machine
        conn.execute("UPDATE results SET host = 'other-host' WHERE codec = 'webp'")
    note = re.search(r'id="hosts-note">([^<]*)<', write_report(db, "small", None, tmp_path / "report").read_text())
    assert note, "a run timed on two hosts must say so"
    assert "2 hosts" in note.group(1) and "other-host: 8" in note.group(1)


def test_every_invocation_of_a_run_is_listed_with_its_revision_and_command(small, tmp_path):
    assert 'id="invocations"' not in small.html  # one invocation: the header says it all
    db = tmp_path / "twice.sqlite"
    shutil.copy(small.db, db)
    # A second invocation with one codec: nothing left to compute, but it is part of the run's record.
    assert run_codecs(db, "small", small.root / "crops", "webp", ("webp=5,30,70,92",)) == 0
    page = Page(write_report(db, "small", None, tmp_path / "report").read_text())
    invocations = page.tables["invocations"]
    assert len(invocations) == 2
    assert "jpeg,webp,vvenc:preset=faster" in invocations[0][3] and "--codecs webp " in invocations[1][3]
    assert all(row[1] == git_revision() for row in invocations)
    assert invocations[0][0] <= invocations[1][0]


def test_a_run_of_imported_rows_lists_no_invocation_it_did_not_have(small, tmp_path):
    """Rows imported without their run record come with no ``licbench run`` of this store: the
    report says so instead of an unknown revision and an empty command, and a later invocation
    is the run's only one."""
    table = tmp_path / "rows.csv"
    assert main(["--db", str(small.db), "export", "small", str(table)]) == 0
    table.with_name(table.name + ".run.json").unlink()
    db = tmp_path / "imported.sqlite"
    assert main(["--db", str(db), "import", str(table)]) == 0
    html = write_report(db, "small", None, tmp_path / "report").read_text()
    imported = re.search(r'id="imported-only">([^<]*)<', html)
    assert imported and str(table) in imported.group(1)
    assert 'id="invocations"' not in html and "<dt>command</dt>" not in html

    assert run_codecs(db, "small", small.root / "crops", "webp", ("webp=5,30,70,92",)) == 0
    html = write_report(db, "small", None, tmp_path / "report").read_text()
    assert 'id="invocations"' not in html and 'id="imported-only"' not in html
    assert re.search(r"<dt>command</dt><dd><code>[^<]*--codecs webp ", html)
    with ResultStore(db) as store:
        provenance = store.run_info("small")["provenance"]
    assert provenance["earlier_invocations"] == [] and provenance["imports"][0]["file"] == str(table)


def test_rows_of_a_codecs_older_settings_are_left_out_and_said(small, tmp_path, capsys):
    """New weights or another build keep a codec's name but change its settings hash; a re-run
    computes the rows afresh and the old ones stay in the run. Analyses take the newest settings
    only: averaging both would describe neither."""
    assert 'id="superseded-note"' not in small.html
    db = tmp_path / "rerun.sqlite"
    shutil.copy(small.db, db)
    with ResultStore(db) as store:
        older = store.results("small")
        older = older[older["codec"] == "webp"].assign(
            settings_hash="0lder", finished_at="2026-01-01T00:00:00+00:00", bpp=lambda rows: rows["bpp"] * 3
        )
        assert store.merge_rows(older)["added"] == len(older) == 12
    html = write_report(db, "small", None, tmp_path / "report").read_text()
    note = re.search(r'id="superseded-note">([^<]*)<', html)
    assert note and "(webp 12)" in unescape(note.group(1))
    assert Page(html).rows_by_first_cell("bd-1-psnr-rgb") == small.page.rows_by_first_cell("bd-1-psnr-rgb")
    # The check and the CI baseline see the same rows, and say what they left out.
    capsys.readouterr()
    assert main(["--db", str(db), "check", "--baseline", str(tmp_path / "b.json"), "--update", "--run", "small"]) == 0
    assert "NOTE rows of older settings left out (webp 12)" in capsys.readouterr().out
    # Had the older rows finished last, they would be the ones used.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE results SET finished_at = '2099-01-01T00:00:00+00:00' WHERE settings_hash = '0lder'")
    html = write_report(db, "small", None, tmp_path / "report").read_text()
    assert "(webp 12)" in unescape(re.search(r'id="superseded-note">([^<]*)<', html).group(1))
    assert Page(html).rows_by_first_cell("bd-1-psnr-rgb")["webp"] != small.page.rows_by_first_cell("bd-1-psnr-rgb")["webp"]


def test_bd_matrix_sets_each_codecs_previous_settings_beside_its_newest(small, tmp_path):
    """New weights against the ones they replace, in one store (``bench/bd_matrix.py --previous``):
    the settings before each codec's newest become ``prev-CODEC``; those older still are left out
    and said."""
    db = tmp_path / "rerun.sqlite"
    shutil.copy(small.db, db)
    with ResultStore(db) as store:
        webp = store.results("small").query("codec == 'webp'")
        for settings_hash, finished_at, bpp_factor in (("0lder", "2026-01-02", 1.25), ("0ldest", "2026-01-01", 2)):
            rows = webp.assign(settings_hash=settings_hash, finished_at=finished_at, bpp=webp["bpp"] * bpp_factor)
            assert store.merge_rows(rows)["added"] == 12
    script = Path(__file__).parents[1] / "bench" / "bd_matrix.py"
    command = [sys.executable, str(script), "--db", str(db), "--run", "small", "--previous", "--anchors", "prev-webp,jpeg"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in done.stdout.splitlines() if line.startswith("| ")}
    # The newest webp curve is the previous one at 1/1.25 of its bits: BD-rate 0.8 - 1.
    assert cells["webp"][0] == "-20.0 %"
    assert cells["prev-webp"][0] == "-"
    assert "prev-jpeg" not in cells  # jpeg was run with one settings only
    # Against jpeg the newest webp is where it was before the older rows came in.
    expected = expected_bd(small.frame, "jpeg", "psnr_rgb", "average-curve")["webp"]
    assert cells["webp"][1].rstrip(" |") == f"{expected:+.1f} %"
    assert "rows of older settings left out (webp 12)" in done.stdout
    # Without --previous there is no prev-webp: one line naming it, and no half-printed table.
    bad = subprocess.run(command[:6] + ["--anchors", "prev-webp"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and "'prev-webp' is not a codec of the run" in bad.stderr


def test_report_with_another_anchor_and_bad_anchors(small, tmp_path, capsys):
    out = tmp_path / "webp-anchored"
    assert main(["--db", str(small.db), "report", "small", "--anchor", "webp", "--output", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert anchor_name(html) == "webp"
    rows = Page(html).rows_by_first_cell("bd-1-psnr-rgb")
    assert rows["jpeg"][1] == f"{expected_bd(small.frame, 'webp', 'psnr_rgb', 'average-curve')['jpeg']:+.2f}"
    assert float(rows["jpeg"][1]) > 10  # the mirror image of webp against jpeg

    capsys.readouterr()
    assert main(["--db", str(small.db), "report", "small", "--anchor", "jpeg:quality=3", "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "'jpeg:quality=3' is not a codec of the run" in error and len(error.splitlines()) == 1
    assert main(["--db", str(small.db), "report", "small", "--anchor", "published:vtm-18.0", "--output", str(out)]) == 2
    assert "unknown dataset 'crops'" in capsys.readouterr().err
    assert main(["--db", str(tmp_path / "none.sqlite"), "report", "small"]) == 2
    assert f"results database {tmp_path / 'none.sqlite'} does not exist" in capsys.readouterr().err


def test_kodak_report_draws_published_vtm_as_default_anchor(tmp_path):
    db = tmp_path / "kodak.sqlite"
    code = run_codecs(db, "k1", "kodak", "jpeg", ("jpeg=10,30,60,90",), "--data-dir", str(SHARED / "data"), "--images", "1")
    assert code == 0
    html = write_report(db, "k1", None, tmp_path / "report").read_text()
    page = Page(html)
    assert_self_contained(html, page)
    assert anchor_name(html) == "published:vtm-18.0"
    assert "published: VTM 18.0" in html and "duanzhiihao/lossy-vae" in html  # the curve and its source
    assert "covers 1 of the 24 kodak images" in html
    assert "not computed: the anchor is a published average curve" in html
    psnr = page.rows_by_first_cell("bd-1-psnr-rgb")["jpeg"]
    assert float(psnr[1]) > 0  # JPEG needs more bits than VTM
    # VTM 18.0 is published with PSNR-RGB only: the report says so instead of inventing a number.
    assert "bd-1-psnr-y" not in page.tables
    assert "no BD on PSNR-Y: published curve kodak--vtm-18.0 has no metric 'psnr_y'" in unescape(html)


# --- headless Chromium -------------------------------------------------------------------------


def chromium_executable() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to test the report: apt-get install chromium (.ci/run installs it)")


def chromium(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess:
    command = [
        chromium_executable(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
        "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--window-size=1280,2400",
        *action, page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def console_messages(stderr: str) -> list[str]:
    """The page's console output as Chromium logs it ("INFO:CONSOLE(3)] "...", source: ...")."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_in_headless_chromium(small, tmp_path):
    dumped = chromium(small.index, tmp_path / "profile", "--dump-dom")
    assert console_messages(dumped.stderr) == []
    assert "Uncaught" not in dumped.stderr
    dom = Page(dumped.stdout)
    assert dom.root.get("data-report-ready") == "yes", "the page's script did not run to its end"
    assert "data-report-errors" not in dom.root
    assert set(dom.rows_by_first_cell("bd-1-psnr-rgb")) == {"webp", "vvenc:preset=faster"}
    assert len(dom.tables["per-image-table"]) == len(small.frame)
    assert sum(row[-1].startswith("bad-input") for row in dom.tables["per-image-table"]) == 12

    shot = tmp_path / "report.png"
    chromium(small.index, tmp_path / "profile", f"--screenshot={shot}")
    screenshot = np.asarray(Image.open(shot).convert("RGB"))
    assert screenshot.shape == (2400, 1280, 3)
    # The RD plots sit below the header, anchor and notes, within the first 1200 pixels; their
    # curves are the only saturated colour on the page.
    plots = screenshot[:1200]
    curves = coloured_pixels(plots)
    assert len(curves) > 3000, "the plot region is blank"
    assert len(np.unique(curves // 32, axis=0)) >= 3  # at least three codec colours
    assert len(coloured_pixels(screenshot[1200:])) < len(curves) / 10
