"""The HTML report: self-contained, renders in headless Chromium with no console errors and all plots."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import synthetic_pairs
from twinnet.calibration import fit_calibrator
from twinnet.evaluation import evaluate
from twinnet.report import render_html, write_report


@pytest.fixture
def evaluated(tiny_model):
    valid, test = synthetic_pairs(24, seed=1), synthetic_pairs(24, seed=2)
    tiny_model.calibration_ = fit_calibrator(tiny_model.score_pairs(valid), valid.labels)
    return evaluate(tiny_model, test, bootstrap=20), test, tiny_model


def test_report_is_self_contained_with_plots_and_errors(evaluated):
    report, test, model = evaluated
    page = render_html(report, test, model.serializer)
    assert len(re.findall(r'<img alt="(roc|pr|det|hist|reliability)" src="data:image/png;base64,', page)) == 5
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "False matches with the highest scores" in page and f"{report.metrics['threshold']:.4f}" in page
    # the hardest false match is listed first, with both records side by side
    y, s, t = report.labels, report.scores, report.metrics["threshold"]
    fm = np.nonzero((y == 0) & (s >= t))[0]
    if len(fm):
        top = fm[np.argmax(s[fm])]
        assert test.left[top] in page and test.right[top] in page


def _chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed (scripts/test.sh installs it with apt-get when it can)")


def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    report, test, model = evaluated
    path = write_report(tmp_path / "report.html", report, test, model.serializer)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=3000"]
    proc = subprocess.run([_chromium(), *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-images-loaded="5"' in proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", "--window-size=1280,2000", path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
