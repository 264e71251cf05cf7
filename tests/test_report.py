"""report.html (issue 39): one self-contained page per run, checked in a real browser.

A small supervised run (train, then inference) is made once; the tests read its two reports,
rebuild them with ``scarkids report RUN_DIR``, render them in headless Chromium when there is
one, and check that failing runs write none and that the ``scarkids.pl`` functions return
figures.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from scarkids import cli, pl
from scarkids.config.load import resolve_config
from scarkids.data.files import write_h5ad
from scarkids.data.simulate import simulate
from scarkids.pl.report import SECTIONS, ReportContent, write_report

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {
    "global": {"latent_dim": 4, "n_diffusion_steps": 20, "n_genes": 100, "supervised": True},
    "data": {"train_data_path": "data/train.h5ad", "test_data_path": "data/test.h5ad"},
    "encoder": {"hidden_dims": [32]},
    "classifier": {"hidden_dim": 16},
    "likelihood": {"hidden_dim": 32},
    "ddpm_backward": {"noise_hidden_dim": 32, "timestep_embed_dim": 8},
    "training": {"n_epochs": 3, "batch_size": 64, "device": "cpu"},
    "inference": {"device": "cpu"},
}
SECTION_IDS = [sid for sid, _ in SECTIONS]


def write_config(path: Path, **sections) -> Path:
    cfg = copy.deepcopy(CONFIG)
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A folder where ``train`` and ``infer`` ran: checkpoints/ and results/, each with a
    report.html (300 training cells, 120 query cells, 2 batches, 3 types)."""
    root = tmp_path_factory.mktemp("report_run")
    (root / "data").mkdir()
    write_h5ad(
        simulate(n_cells=300, n_genes=120, n_batches=2, n_cell_types=3, seed=0),
        root / "data" / "train.h5ad",
    )
    write_h5ad(
        simulate(n_cells=120, n_genes=120, n_batches=2, n_cell_types=3, seed=1),
        root / "data" / "test.h5ad",
    )
    write_config(root / "config.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert cli.main(["train", "--config", "config.yaml"]) == 0
        assert cli.main(["infer", "--config", "config.yaml"]) == 0
    return root


class _Links(HTMLParser):
    """Every src and href of a page, and the ids of its sections."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.sections: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if attrs.get(k) is not None]
        if tag == "section":
            self.sections.append(attrs.get("id"))
        self.images += tag == "img"


def parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def reports(root: Path) -> list[Path]:
    return [root / "checkpoints" / "report.html", root / "results" / "report.html"]


def test_train_and_inference_write_a_report_with_every_section(run_dir):
    for path in reports(run_dir):
        page = parse(path)
        assert page.sections == SECTION_IDS, path
        assert page.images >= 6, path  # curves, UMAPs, composition, histogram, unknown, confusion
    text = (run_dir / "results" / "report.html").read_text()
    for words in ("Batch silhouette", "cLISI", "bLISI", "seed's range", "batch_0 (", "UMAP of"):
        assert words in text
    assert "report.html" in (run_dir / "results" / "report.html").read_text()


def test_no_src_or_href_points_outside_the_file(run_dir):
    for path in reports(run_dir):
        page = parse(path)
        assert page.links, path
        outside = [link for link in page.links if not link.startswith(("data:", "#"))]
        assert outside == [], path
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", text, re.I)
        assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", text, re.I)
        assert "@import" not in text and "<link" not in text.lower()


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render(browser: str, page: Path, tmp_path: Path) -> tuple[str, str]:
    """The DOM after the page's load event, and the browser's log (stderr)."""
    proc = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # any request out fails, and is logged
            "--virtual-time-budget=10000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip(
            "no chromium, chromium-browser or google-chrome on PATH: install one "
            "(apt-get install chromium) to render the report in a browser"
        )
    for path in reports(run_dir):
        dom, log = render(browser, path, tmp_path)
        body = re.search(r"<body([^>]*)>", dom)
        assert body, dom[:500]
        marks = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
        assert marks.get("rendered") == "yes", f"the page's script did not run: {marks}"
        assert marks["sections"] == str(len(SECTION_IDS))
        assert int(marks["images"]) >= 6
        assert marks["images-decoded"] == marks["images"], f"an image did not decode: {marks}"
        assert marks["requests"] == "0", f"the page fetched something: {marks}"
        for sid in SECTION_IDS:
            assert f'id="{sid}"' in dom, sid
        console = [line for line in log.splitlines() if ":CONSOLE" in line]
        assert console == [], console
        assert not re.search(r"net::ERR_|ERR_NAME_NOT_RESOLVED", log), log[-2000:]


def test_report_command_rebuilds_both_reports_from_the_run_files(run_dir, capsys, monkeypatch):
    monkeypatch.chdir(run_dir)
    for path in reports(run_dir):
        before = path.read_text()
        path.unlink()
        assert cli.main(["report", str(path.parent), "--max_cells", "100"]) == 0
        page = parse(path)
        assert page.sections == SECTION_IDS and page.images >= 6
        text = path.read_text()
        assert "subsample of 100" in text  # the cap is said in the caption
        assert ("Batch silhouette" in before) == ("Batch silhouette" in text)
    training = (run_dir / "checkpoints" / "report.html").read_text()
    assert "training wall time" in training and "not recorded" not in training
    assert not list(run_dir.glob("**/.report.html.*"))  # no temporaries left


def test_report_command_on_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "run_info.json" in err
    assert not (tmp_path / "report.html").exists()


def test_report_false_skips_it(run_dir, capsys, monkeypatch):
    assert resolve_config({"report": False})["report"]["enabled"] is False
    assert resolve_config({})["report"] == {"enabled": True, "max_cells": 10_000}
    monkeypatch.chdir(run_dir)
    write_config(run_dir / "no_report.yaml", report=False)
    argv = ["infer", "--config", "no_report.yaml", "--output_dir", "results_no_report"]
    assert cli.main(argv) == 0
    assert (run_dir / "results_no_report" / "run_info.json").exists()
    assert not (run_dir / "results_no_report" / "report.html").exists()


def test_failing_runs_write_no_report(run_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(run_dir)
    write_config(run_dir / "bad_batch.yaml", inference={"default_target_batch": "nope"})
    argv = ["infer", "--config", "bad_batch.yaml", "--output_dir", str(tmp_path / "bad")]
    assert cli.main(argv) == 2
    assert not (tmp_path / "bad" / "report.html").exists()

    from scarkids.model.scarkids import SCARKIDS

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SCARKIDS, "train", interrupted)
    ckpt = tmp_path / "ckpt"
    write_config(run_dir / "stopped.yaml", training={"checkpoint_dir": str(ckpt)})
    assert cli.main(["train", "--config", "stopped.yaml", "--fresh"]) == 130
    assert not (ckpt / "report.html").exists()


def test_a_failing_report_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("broken figure")

    monkeypatch.setattr(pl.figures, "training_curves", broken)
    content = ReportContent(title="t", history={"train_loss": [1.0], "train_elbo": [1.0]})
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "report.html", content)
    assert list(tmp_path.iterdir()) == []


def test_pl_functions_return_figures(run_dir):
    from scarkids.model.scarkids import SCARKIDS

    model = SCARKIDS.load(run_dir / "checkpoints" / "best_model.pt", device="cpu")
    table = pd.read_csv(run_dir / "results" / "cell_type_predictions.csv", index_col="cell_id")
    test = simulate(n_cells=120, n_genes=120, n_batches=2, n_cell_types=3, seed=1)
    assert table.index.tolist() == test.obs_names.tolist()
    latent = np.load(run_dir / "results" / "latent_embeddings.npy")
    coords = pl.umap_coordinates(latent, seed=0)
    assert coords.shape == (test.n_obs, 2)
    obs = test.obs.assign(probability=table["probability"].to_numpy())
    figures = [
        pl.training_curves(model),
        pl.training_curves(model.history, best_epoch=2),
        pl.umap_figure(coords, obs, ["batch", "cell_type", "probability"]),
        pl.composition(test, batch_key="batch", label_key="cell_type"),
        pl.confidence_histogram(table, threshold=0.5),
        pl.confidence_histogram(table["probability"].to_numpy()),
        pl.unknown_per_batch(table, test.obs["batch"]),
        pl.confusion_matrix(test.obs["cell_type"], table["predicted_label"]),
    ]
    assert all(isinstance(fig, Figure) for fig in figures)
    with pytest.raises(Exception, match="no training history"):
        pl.training_curves({})
    with pytest.raises(Exception, match="no cell has a label"):
        pl.confusion_matrix([None, None], ["a", "b"])


def test_model_report_in_python(run_dir, tmp_path):
    from scarkids.model.scarkids import SCARKIDS

    adata = simulate(n_cells=150, n_genes=120, n_batches=2, n_cell_types=3, seed=2)
    model = SCARKIDS.load(run_dir / "checkpoints" / "best_model.pt", adata, device="cpu")
    path = model.report(tmp_path / "model.html", adata, max_cells=100)
    page = parse(path)
    assert page.sections == SECTION_IDS and page.images >= 6
    assert "subsample of 100 of 150 cells" in path.read_text()
    bare = SCARKIDS.load(run_dir / "checkpoints" / "best_model.pt", device="cpu")
    page = parse(bare.report(tmp_path / "bare.html"))  # no data: the curves alone
    assert page.sections == SECTION_IDS and page.images == 1


def test_the_browser_check_catches_an_external_request_and_a_console_error(tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH")
    content = ReportContent(title="bad", header=[("a", "b")])
    path = write_report(tmp_path / "report.html", content)
    text = path.read_text().replace(
        "</body>",
        "<img src='https://example.invalid/x.png'><script>console.error('boom')</script></body>",
    )
    path.write_text(text)
    assert [link for link in parse(path).links if link.startswith("http")]
    dom, log = render(browser, path, tmp_path)
    marks = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))
    assert marks["requests"] != "0" and marks["images-decoded"] != marks["images"]
    assert any(":CONSOLE" in line and "boom" in line for line in log.splitlines())
