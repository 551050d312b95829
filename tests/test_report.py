"""`bench report`: the page's tables are the store's numbers; one file that reads offline; its Markdown twin."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.perf.store import synthetic_row
from bench.report import write_report
from bench.store import ResultStore

SWEEP = "jelassi2022-real-data"
PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


class Tables(HTMLParser):
    """Each <table data-metric=...> of the page as {metric: {(row, col): cell text}}."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, dict[tuple[str, str], str]] = {}
        self.metric = None
        self.header: list[str] = []
        self.row: list[str] = []
        self.text = None
        self.in_head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "data-metric" in attrs:
            self.metric = attrs["data-metric"] + ":" + attrs["data-cols"] + f":{len(self.tables)}"
            self.tables[self.metric] = {}
            self.header = []
        elif tag == "thead":
            self.in_head = True
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th") and self.metric:
            self.text = ""
        elif tag == "span" and self.text is not None:
            self.text += " | "

    def handle_data(self, data):
        if self.text is not None:
            self.text += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.text is not None:
            self.row.append(self.text.strip())
            self.text = None
        elif tag == "tr" and self.metric:
            if self.in_head:
                self.header = self.row
            else:
                for col, cell in zip(self.header[1:], self.row[1:]):
                    self.tables[self.metric][(self.row[0], col)] = cell
        elif tag == "thead":
            self.in_head = False
        elif tag == "table":
            self.metric = None


@pytest.fixture()
def store(tmp_path):
    s = ResultStore(tmp_path, SWEEP)
    i = 0
    for model in ("vit_s", "vit_s_pos"):
        for dataset in ("cifar10", "svhn"):
            for seed in range(3):
                acc = 0.80 + 0.05 * (model == "vit_s_pos") + 0.1 * (dataset == "svhn") + 0.01 * seed
                s.write_trial(synthetic_row(SWEEP, i, test_acc=acc, model=model, dataset={"name": dataset},
                                            train_size=1.0, seed=seed, model_args={"depth": 7, "patch_size": 4}))
                i += 1
    s.write_trial(synthetic_row(SWEEP, 99, status="failed", model="vit_s", dataset={"name": "svhn"},
                                train_size=1.0, seed=7, model_args={"depth": 7, "patch_size": 4}))
    return tmp_path


@pytest.fixture()
def fake_plots(monkeypatch):
    """`bench.plots.plot_sweep` with its agreed signature, writing one PNG and one SVG."""
    module = types.ModuleType("bench.plots")

    def plot_sweep(results_dir, sweep, out_dir, formats=("png", "svg")):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "test_acc.png").write_bytes(PNG)
        (out_dir / "test_acc.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>')
        return [out_dir / "test_acc.png", out_dir / "test_acc.svg"]

    module.plot_sweep = plot_sweep
    monkeypatch.setitem(sys.modules, "bench.plots", module)


def test_report_tables_are_the_store_numbers(store, tmp_path, fake_plots):
    html_path, md_path = write_report(SWEEP, str(store), str(tmp_path / "out"))
    page = html_path.read_text()
    parser = Tables()
    parser.feed(page)
    plain = pd.read_parquet(store / SWEEP / "trials")
    ok = plain[plain["status"] == "ok"]
    expected = ok.groupby(["model", "dataset"])["test_acc"].agg(["mean", "std", "count"])
    acc = next(v for k, v in parser.tables.items() if k.startswith("test_acc:dataset"))
    assert len(acc) == len(expected) == 4
    for (model, dataset), e in expected.iterrows():
        cell = acc[(model, dataset)]
        assert cell.startswith(f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f} (n={int(e['count'])})"), cell
    # the paper's number side by side: vit_s on cifar10 is ≈90.2% (figure)
    mean = ok[(ok.model == "vit_s") & (ok.dataset == "cifar10")]["test_acc"].mean()
    assert acc[("vit_s", "cifar10")].endswith(f"paper ≈90.2% (figure), Δ {100 * (mean - 0.902):+.1f} pt")
    loss = next(v for k, v in parser.tables.items() if k.startswith("test_loss:dataset"))
    e = ok[(ok.model == "vit_s_pos") & (ok.dataset == "svhn")]["test_loss"]
    assert loss[("vit_s_pos", "svhn")] == f"{e.mean():.4f} ± {e.std():.4f} (n=3)"
    assert "12 ok, 1 failed" in page.replace("13 trials (", "")


def test_report_is_one_offline_page_with_figures_sweep_environment_and_references(store, tmp_path):
    html_path, md_path = write_report(SWEEP, str(store), str(tmp_path / "out"))  # figures from bench.plots itself
    page = html_path.read_text()
    uri = re.search(r'<img alt="accuracy_vs_train_size" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert uri and base64.b64decode(uri.group(1)).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched: reads offline
    assert "<style>" in page and "<link" not in page and "<script" not in page
    assert "grid:" in page and "model:" in page and "dataset.name" in page  # sweep rebuilt from the configs
    assert "torch" in page and "git commit" in page and "ray" in page
    assert "jelassi2022-real-data" in page and "≈97.3%" in page  # the experiment's reference rows
    md = md_path.read_text()
    assert "![accuracy_vs_train_size](figures/accuracy_vs_train_size.png)" in md
    assert (tmp_path / "out" / "figures" / "accuracy_vs_train_size.png").exists()
    assert "| vit_s " in md and "(n=3) · paper ≈90.2% (figure)" in md and "```yaml" in md


def test_cli_report_with_the_sweep_file_and_without_plots(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bench.plots", None)  # as before bench.plots exists: import fails
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(f"name: {SWEEP}\ndataset: {{name: cifar10}}\ngrid:\n  model: [vit_s]\n  seed: [0]\n")
    assert main(["report", SWEEP, "--results", str(store), "--out", str(tmp_path / "r")]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "no figures: bench.plots is not available" in page
    html_path, _ = write_report(SWEEP, str(store), str(tmp_path / "f"), sweep_file=str(sweep_file))
    page = html_path.read_text()
    assert f"sweep file {sweep_file}" in page and "model: [vit_s]" in page  # the file itself, verbatim
    assert main(["report", "nope", "--results", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no sweep of that name" in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
#: Injected into a copy of the page (the page itself has no script): once every image has
#: loaded, write what the browser made of each (decoded size, laid-out width) into the DOM that --dump-dom prints.
PROBE = """<script>
// Synchronous on purpose: the load event fires only after every <img> has loaded, so sizes are known
// here; an async handler (img.decode()) could still be pending when --dump-dom writes the page.
window.addEventListener("load", () => {
  const images = [...document.images].map((img) => (img.complete && img.naturalWidth > 0)
    ? {alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, shown: img.getBoundingClientRect().width}
    : {alt: img.alt, error: "not decoded (complete=" + img.complete + ")"});
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with its own profile folder; virtual time lets the load handlers finish."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (the system package `chromium`) for the headless-browser check")
def test_report_in_a_headless_browser(store, tmp_path):
    """The page as Chromium renders it: every figure decodes to a real image, the screenshot is
    not blank, and the tables in the browser's DOM are the store's numbers."""
    from PIL import Image

    html_path, _ = write_report(SWEEP, str(store), str(tmp_path / "out"))  # real bench.plots figures
    page = html_path.read_text()
    probe = html_path.with_name("probe.html")
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dumped = chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dumped.stdout, re.S)
    assert found, "the probe script did not run: " + dumped.stdout[-500:]
    images = json.loads(html.unescape(found.group(1)))
    assert [i["alt"] for i in images] == ["accuracy_vs_train_size"]  # as many <img> as figures, all of them
    for image in images:
        assert "error" not in image, image
        assert image["width"] >= 800 and image["height"] >= 300 and image["shown"] > 300, image  # decoded, laid out

    tables = Tables()
    tables.feed(dumped.stdout)  # the browser's DOM, not our string
    plain = pd.read_parquet(store / SWEEP / "trials")
    ok = plain[plain["status"] == "ok"]
    for metric, scale, digits in (("test_acc", 100, 1), ("test_loss", 1, 4)):
        stats = ok.groupby(["model", "dataset"])[metric].agg(["mean", "std", "count"])
        shown = next(v for k, v in tables.tables.items() if k.startswith(f"{metric}:dataset"))
        assert len(shown) == len(stats) == 4
        for (model, dataset), e in stats.iterrows():
            expected = f"{scale * e['mean']:.{digits}f} ± {scale * e['std']:.{digits}f} (n={int(e['count'])})"
            assert shown[(model, dataset)].startswith(expected), (metric, model, dataset, shown[(model, dataset)])

    shot = tmp_path / "page.png"
    taken = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", html_path.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    picture = Image.open(shot).convert("RGB")
    assert picture.size == (1280, 2400)
    colours = picture.getcolors(maxcolors=1 << 20) or []
    background = max(colours)[0] / (1280 * 2400)
    assert len(colours) > 200 and background < 0.97, (len(colours), background)  # text, tables and a figure drawn


HOSTILE_STATUS = ('<img src=x onerror="document.title=\'pwned\'">'
                  "<script>document.title='pwned'</script>")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (the system package `chromium`) for the headless-browser check")
def test_a_hostile_status_value_is_shown_as_text_in_the_browser(store, tmp_path, monkeypatch):
    """Stored data is untrusted: a status planted in the store renders as the characters it holds."""
    monkeypatch.setitem(sys.modules, "bench.plots", None)  # no figures needed: the page's own markup is under test
    ResultStore(store, SWEEP).write_trial(synthetic_row(SWEEP, 77, status=HOSTILE_STATUS, model="vit_s",
                                                        dataset={"name": "svhn"}, train_size=1.0, seed=8,
                                                        model_args={"depth": 7, "patch_size": 4}))
    html_path, md_path = write_report(SWEEP, str(store), str(tmp_path / "out"))
    assert "<script" not in html_path.read_text() and "<img src=x" not in html_path.read_text()
    dumped = chromium(tmp_path, "--dump-dom", html_path.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.title, self.meta, self._in = [], "", "", None

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))
            if tag == "title" or (tag == "p" and dict(attrs).get("class") == "meta" and not self.meta):
                self._in = tag

        def handle_data(self, data):
            if self._in == "title":
                self.title += data
            elif self._in == "p":
                self.meta += data

        def handle_endtag(self, tag):
            if tag == self._in:
                self._in = None

    page = Page()
    page.feed(dumped.stdout)  # the browser's DOM after it ran whatever it would run
    assert page.title == f"bench report: {SWEEP}"  # no script ran
    assert not [t for t, attrs in page.tags if t == "script" or "onerror" in attrs]
    assert f"1 {HOSTILE_STATUS}" in page.meta  # the value itself, as text
