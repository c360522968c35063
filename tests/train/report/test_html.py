"""HTML reports: self-contained pages (every image a decodable data URI, nothing fetched), the sections
and numbers a run and an experiment hold, and the page rendered by headless Chromium with no request made."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcpc_train.apps.tables import markdown_table, plot_fig4_left, table_stats
from tcpc_train.report.html import CSP, experiment_report, markdown_html, run_report


class _Page(HTMLParser):
    """The parts of a page the tests look at: section ids, images, links, CSP, table cells."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.urls, self.csp, self.cells = [], [], [], None, []
        self._in_td = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "img":
            self.images.append((a.get("alt"), a["src"]))
        if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a["content"]
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data")]
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)
            self._in_td = False


def _image(src: str):
    """Decode a data URI: an SVG's root element or a PNG's size (either fails loudly if broken)."""
    head, b64 = src.split(",", 1)
    data = base64.b64decode(b64, validate=True)
    if head == "data:image/svg+xml;base64":
        root = ET.fromstring(data)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        return root
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(data)).size


def check_self_contained(path: Path) -> _Page:
    """Parse a report and assert it can be opened offline: CSP that forbids fetching, every image an
    embedded, decodable picture, and no link or source that leaves the page's folder."""
    text = path.read_text(encoding="utf-8")
    page = _Page(text)
    assert page.csp == CSP and "default-src 'none'" in CSP
    for _, src in page.images:
        _image(src)
    for url in page.urls:
        assert url.startswith(("data:", "#")) or ("://" not in url and not url.startswith(("/", "//"))), url
    assert "<script" not in text and "url(" not in text and "@import" not in text
    return page


def _binary_predictions(n: int = 40, right: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    ok = np.arange(n) < right
    p1 = np.where(ok == (labels == 1), 0.8, 0.2) + rng.uniform(-0.05, 0.05, n)
    return labels, np.log(np.stack([1 - p1, p1], 1))


def test_run_report_holds_curves_roc_confusion_and_config(tmp_path):
    labels, scores = _binary_predictions()
    rows = [{"step": s, "epoch": 1 + s // 5, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 11)]
    rows += [{"step": 5, "epoch": 1, "val_acc": 0.6, "val_auc": 0.7}, {"step": 10, "epoch": 2, "val_auc": 0.9}]
    metrics = {"acc": 0.75, "auc": 0.8125, "confusion": [[17, 3], [7, 13]], "n": 40}
    config = {"arch": "resnet18", "lr": 0.001, "runtime": {"seed": 3, "workers": 0}}
    path = run_report(tmp_path / "report.html", "fine-tuning", config=config, rows=rows,
                      summary={"n_train": 12, "checkpoint": "best.pt", "val": [{"epoch": 1}]}, metrics=metrics,
                      labels=labels, scores=scores)
    page = check_self_contained(path)
    assert page.sections == ["summary", "curves", "roc", "confusion-matrix", "configuration"]
    assert [alt for alt, _ in page.images] == ["curves: loss, lr, val_auc, val_acc", "ROC curves"]
    # the curves figure has a panel per series, the ROC figure its AUC in the legend (text stays text)
    svg = _image(page.images[0][1])
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {"loss", "lr", "val_auc", "val_acc"} <= texts
    roc_texts = " ".join(t.text or "" for t in _image(page.images[1][1]).iter("{http://www.w3.org/2000/svg}text"))
    assert "AUC" in roc_texts
    cells = page.cells
    for name, value in (("runtime.seed", "3"), ("arch", "resnet18"), ("acc", "0.75"), ("n_train", "12")):
        assert cells[cells.index(name) + 1] == value
    assert "val" not in cells  # nested values are left to summary.json
    assert [c for c in cells if c.isdigit() and c in ("17", "3", "7", "13")][:4] == ["17", "3", "7", "13"]


def test_pretraining_report_without_predictions_has_no_roc(tmp_path):
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3, "samples_per_s": 50.0} for s in range(1, 6)]
    page = check_self_contained(run_report(tmp_path / "r.html", "tcpc pretraining", config={"task": "tcpc"},
                                           rows=rows, summary={"final_loss": 2.7}))
    assert page.sections == ["summary", "curves", "configuration"]


def test_markdown_table_becomes_an_html_table():
    html = markdown_html("Intro line.\n\n| a | b |\n|---|---|\n| 1 | <2> |\n\n\\* a note\n")
    assert html == ("<p>Intro line.</p>\n<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>&lt;2&gt;</td></tr>"
                    "</table>\n<p>* a note</p>")


def _experiment(root: Path) -> Path:
    """An experiment directory as run_experiment leaves it: two methods, one fraction, two seeds."""
    cells = []
    for method, row, right in (("TCPC", "tcpc", 36), ("train from scratch", "scratch", 20)):
        for seed in (0, 1):
            cell = root / "cells" / f"{row}-f0.1-s{seed}"
            cell.mkdir(parents=True)
            labels, scores = _binary_predictions(right=right, seed=seed)
            np.savez(cell / "predictions.npz", key=np.array([f"k{i}" for i in range(40)]),
                     group=np.array([f"p{i // 2}" for i in range(40)]), labels=labels, scores=scores)
            (cell / "log.jsonl").write_text("".join(
                json.dumps({"step": 3 * e, "epoch": e, "val_auc": 0.5 + 0.1 * e + 0.05 * seed}) + "\n"
                for e in (1, 2, 3)))
            run_report(cell / "report.html", "fine-tuning", config={"seed": seed})
            cells.append({"row": row, "method": method, "fraction": 0.1, "seed": seed, "acc": right / 40,
                          "auc": None, "predictions": str(cell.relative_to(root))})
        pre = root / "pretrain" / f"{row}-p0"
        pre.mkdir(parents=True)
        (pre / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3 - s / 50}) + "\n"
                                               for s in range(1, 60)) + '{"step": 60, "lo')  # a kill's cut line
    (root / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    (root / "experiment.json").write_text(json.dumps({"data": "/data/adrenal.npz", "seeds": [0, 1],
                                                      "selection": {"rows": []}}))
    stats = table_stats(cells, root, n_boot=50)
    (root / "results.md").write_text("Header.\n\n" + markdown_table(stats, ["train from scratch", "TCPC"], [0.1]))
    plot_fig4_left(stats, ["train from scratch", "TCPC"], [0.1], root / "fig4_left.png", title="t")
    return root


def test_experiment_report_from_its_directory(tmp_path):
    out = _experiment(tmp_path / "exp")
    page = check_self_contained(experiment_report(out))
    assert page.sections == ["results", "figure-4", "curves", "roc", "confusion-matrices", "runs", "configuration"]
    alts = [alt for alt, _ in page.images]
    assert alts == ["Fig. 4 left: metrics by label fraction", "pretraining loss per method",
                    "validation AUC per epoch", "ROC curves per label fraction"]
    text = (out / "report.html").read_text()
    assert "| 10 % | TCPC | 2 |" not in text and "<td>TCPC</td>" in text  # the table is HTML, not Markdown
    assert "cells/tcpc-f0.1-s0/report.html" in page.urls and "cells/scratch-f0.1-s1/report.html" in page.urls
    assert page.cells[page.cells.index("data") + 1] == "/data/adrenal.npz"
    # the confusion matrices sum both seeds: TCPC right on 36 of 40 per seed, scratch on 20
    totals = {}
    for method in ("TCPC", "train from scratch"):
        i = text.index(f"<caption>{method}</caption>")
        block = _Page(text[i:text.index("</table>", i)]).cells
        totals[method] = [int(c) for c in block]
    assert totals["TCPC"] == [36, 4, 4, 36] and totals["train from scratch"] == [20, 20, 20, 20]


def test_report_command_rebuilds_experiment_and_run_pages(tmp_path):
    from click.testing import CliRunner

    from cli import main

    out = _experiment(tmp_path / "exp")
    cell = out / "cells" / "tcpc-f0.1-s0"
    (cell / "config.json").write_text(json.dumps({"arch": "vgg", "runtime": {"seed": 0}}))
    (cell / "metrics.json").write_text(json.dumps({"acc": 0.9, "confusion": [[18, 2], [2, 18]]}))
    (cell / "report.html").unlink()
    res = CliRunner().invoke(main, ["report", str(out), str(cell)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [f"report written to {out / 'report.html'}",
                                       f"report written to {cell / 'report.html'}"]
    page = check_self_contained(cell / "report.html")
    assert page.sections == ["summary", "curves", "roc", "confusion-matrix", "configuration"]
    assert page.cells[page.cells.index("runtime.seed") + 1] == "0"
    assert check_self_contained(out / "report.html").sections[0] == "results"
    res = CliRunner().invoke(main, ["report", str(out / "cells")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "neither an experiment" in res.output
    assert len(res.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The page in a browser
# ---------------------------------------------------------------------------------------------

_CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                 None)
_QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def _no_network_prefix() -> list[str]:
    """``unshare --net`` where this user may make a network namespace: the browser's own update checks
    then cannot leave the machine either (the page's requests are what the test counts)."""
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--net"]
    return []


def render(page: Path, tmp: Path, *extra: str) -> tuple[str, list[str]]:
    """Open ``page`` in headless Chromium: (the DOM it built, URLs of the requests the page started).

    The requests come from Chromium's network log: every job whose network isolation key is the
    page's file:// origin (the browser's own background requests have another key).
    """
    netlog = tmp / f"{page.stem}.netlog.json"
    run = subprocess.run([*_no_network_prefix(), _CHROMIUM, *_QUIET, f"--user-data-dir={tmp / 'profile'}",
                          f"--log-net-log={netlog}", *extra, "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = [e["params"]["url"] for e in log["events"] if e["type"] == start and "url" in e.get("params", {})
            and e["params"].get("network_isolation_key", "").startswith("file://")]
    return run.stdout, [u for u in urls if not u.startswith(("file:", "data:"))]


needs_chromium = pytest.mark.skipif(_CHROMIUM is None, reason="no chromium (apt-get install chromium; .ci/run does)")


@needs_chromium
def test_browser_renders_a_run_report_and_fetches_nothing(tmp_path):
    labels, scores = _binary_predictions()
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 11)]
    report = run_report(tmp_path / "report.html", "fine-tuning", config={"arch": "vgg"}, rows=rows,
                        metrics={"acc": 0.75, "confusion": [[17, 3], [7, 13]]}, labels=labels, scores=scores)
    dom, requests = render(report, tmp_path)
    assert requests == []
    page = _Page(dom)
    assert page.sections == ["summary", "curves", "roc", "confusion-matrix", "configuration"]
    assert len(page.images) == 2 and all(src.startswith("data:image/svg+xml;base64,") for _, src in page.images)

    # The detector sees a request when a page makes one, and our policy stops it.
    bait = '<img alt="bait" src="http://127.0.0.1:9/x.png">'
    open_page = tmp_path / "open.html"
    open_page.write_text(f"<!DOCTYPE html><html><body>{bait}</body></html>")
    assert render(open_page, tmp_path)[1] == ["http://127.0.0.1:9/x.png"]
    guarded = tmp_path / "guarded.html"
    guarded.write_text(report.read_text().replace("</body>", bait + "</body>"))
    assert render(guarded, tmp_path)[1] == []


@needs_chromium
def test_browser_screenshot_of_an_experiment_report_shows_its_figures(tmp_path):
    out = _experiment(tmp_path / "exp")
    shot = tmp_path / "shot.png"
    run = subprocess.run([*_no_network_prefix(), _CHROMIUM, *_QUIET, f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1200,2400", f"--screenshot={shot}", experiment_report(out).resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1200)
    # drawn, not blank: a good share of the page is ink (text, axes, curves, shaded cells)
    assert (img < 200).mean() > 0.02 and os.path.getsize(shot) > 50_000


def test_finetune_and_evaluate_write_their_reports(labelled, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tcpc_train.loops.finetuning import FinetuneConfig, evaluate, finetune
    from tcpc_train.loops.runtime import RuntimeConfig

    s = finetune(labelled, tmp_path, FinetuneConfig(arch="vgg", epochs=2, width=1 / 16, batch_size=8,
                                                    runtime=RuntimeConfig(workers=0, shuffle_buffer=64)),
                 tensorboard=True)
    page = check_self_contained(tmp_path / "report.html")
    assert page.sections == ["summary", "curves", "roc", "confusion-matrix", "configuration"]
    assert page.images[0][0] == "curves: loss, lr, val_auc, val_acc, samples_per_s"
    assert page.cells[page.cells.index("acc") + 1] == f"{s['metrics']['acc']:.4g}"
    acc = EventAccumulator(str(tmp_path)).Reload()
    assert [e.value for e in acc.Scalars("val_auc")] == pytest.approx([v["auc"] for v in s["val"]])
    evaluate(tmp_path / "best.pt", labelled, tmp_path / "eval")
    page = check_self_contained(tmp_path / "eval" / "report.html")
    assert page.sections == ["summary", "roc", "confusion-matrix", "configuration"]
    assert page.cells[page.cells.index("arch") + 1] == "vgg"
