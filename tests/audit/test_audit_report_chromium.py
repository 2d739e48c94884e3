"""The HTML report opened in headless Chromium: every gallery image must load (naturalWidth > 0)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from audit_helpers import write_bad_inputs, write_digits
from onnx_gradcam.audit import AuditConfig, run_audit
from onnx_gradcam.demo import data_path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary on PATH (CI installs Debian's chromium: apt-get install -y chromium)")


def rendered_body(html_path, profile) -> dict[str, str]:
    """The attributes of <body> after Chromium loaded the page and ran its scripts."""
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", html_path.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, result.stdout[:2000]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


@pytest.fixture(scope="module")
def report(tmp_path_factory, model_path):
    folder = tmp_path_factory.mktemp("report")
    write_digits(folder / "digits", 24)
    write_bad_inputs(folder / "bad")
    (folder / "labels.csv").write_text("path,label\n" + "".join(  # some wrong labels: a misclassified gallery
        f"digits/{path.parent.name}/{path.name},{(int(path.parent.name) + (i % 3 == 0)) % 10}\n"
        for i, path in enumerate(sorted((folder / "digits").rglob("*.png")))))
    summary = run_audit(AuditConfig(model=model_path, inputs=[str(folder / "labels.csv"), str(folder / "bad")],
                                    out_dir=folder / "out", method="hirescam", batch_size=8, progress=False,
                                    labels_file=data_path("digits_labels.txt")))
    assert summary.report and summary.errors > 0
    return folder / "out" / "report.html"


def test_every_report_image_loads_in_chromium(report, tmp_path):
    html = report.read_text()
    images = html.count("<img ")
    assert images >= 3 * 8 and "Misclassified" in html and "truncated JPEG" in html
    assert not re.search(r"(src|href)=.(https?:)?//", html)  # nothing fetched: works offline
    body = rendered_body(report, tmp_path / "profile")
    assert body["data-images-loaded"] == "all", body
    assert int(body["data-images-total"]) == int(body["data-images-ok"]) == images


def test_a_broken_image_is_caught_by_the_check(report, tmp_path):
    broken = tmp_path / "broken.html"
    first_image = r"src='data:image/[a-z]+;base64,[^']{40}"
    broken.write_text(re.sub(first_image, "src='data:image/png;base64,AAAA", report.read_text(), count=1))
    body = rendered_body(broken, tmp_path / "profile")
    assert body["data-images-loaded"] == "broken"
    assert int(body["data-images-ok"]) == int(body["data-images-total"]) - 1
