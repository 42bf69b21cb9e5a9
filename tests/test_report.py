"""The run report: written at the end of training, one self-contained HTML file, and it renders in a
real headless Chromium with every image decoded and no empty section."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from vislang.explain import explain_run
from vislang.report import html as report_html

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@pytest.fixture(scope="module")
def run(small_image_run, tmp_path_factory) -> Path:
    """The small quickstart run (conftest), copied, with explanations and its report rewritten."""
    run_dir = tmp_path_factory.mktemp("report") / small_image_run.name
    shutil.copytree(small_image_run, run_dir)
    explain_run(run_dir, methods=["saliency,gradcam", "max_activating", "errors"], top_k=4, channels="0-5",
                n_images=4, progress=False)
    report_html.write_report(run_dir)
    return run_dir


def test_training_wrote_the_report(small_image_run):
    html = (small_image_run / "report.html").read_text()
    assert '<section id="metrics">' in html and '<section id="curves">' in html


def test_training_writes_the_report(run):
    assert (run / "report.html").is_file()
    html = (run / "report.html").read_text()
    # self-contained: every image is inline, nothing is fetched from anywhere
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    assert "http://" not in html and "https://" not in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    for section in ("overview", "data", "curves", "metrics", "per-class", "confusion", "roc", "explanations", "config"):
        assert f'<section id="{section}">' in html, section
    assert "attributions.png" in html and "max_activating_body.2.png" in html and "errors_confident.png" in html


def test_report_renders_in_chromium(run):
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium binary found (install Debian's chromium: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((run / "report.html").as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        sections = page.evaluate("""Array.from(document.querySelectorAll('section')).map(s => [s.id,
            s.querySelectorAll('img, table, pre, iframe').length, s.innerText.trim().length])""")
        browser.close()
    assert images and all(complete and width > 0 for _, complete, width in images), images
    assert len(sections) >= 9
    for sid, blocks, text in sections:
        assert blocks > 0 and text > 0, f"section {sid} is empty"
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # opens offline


def test_report_embeds_text_and_caption_artefacts(run, tmp_path):
    """Generic over tasks: explanation HTML pages, caption galleries and count tables of any run."""
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "explain" / "words.html").write_text('<html><body><span style="background:#f88">great</span></body></html>')
    shutil.copy(run / "plots" / "loss.png", other / "plots" / "gallery_best.png")
    data = (other / "data.json").read_text().replace('"class_counts"', '"class_counts_before_mapping": '
                                                     '{"train": {"joy": 3, "others": 2}}, "class_counts"', 1)
    (other / "data.json").write_text(data)
    html = report_html.write_report(other).read_text()
    assert 'srcdoc="&lt;html&gt;' in html and "great" in html
    assert '<section id="captions">' in html and "gallery_best.png" in html
    assert "class counts before mapping" in html and ">joy<" in html


def test_a_report_failure_only_warns(run, monkeypatch, caplog):
    def broken(run_dir, output=None):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_html, "write_report", broken)
    with caplog.at_level(logging.WARNING, logger="vislang.report"):
        assert report_html.write_report_safely(run) is None
    assert "disk full" in caplog.text and "vislang report" in caplog.text
