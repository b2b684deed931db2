"""A self-contained HTML report of an evaluation: curves, histograms, reliability, metrics, hardest errors.

Plots are drawn with matplotlib and embedded as base64 PNG, so the file opens offline with no network access.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twinnet.data.pairs import PairDataset
from twinnet.data.records import RecordSerializer
from twinnet.evaluation import EvaluationReport
from twinnet.io import atomic_path


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(report: EvaluationReport) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, s, t = report.labels, report.scores, report.metrics["threshold"]
    plots: dict[str, str] = {}
    fpr, tpr, _ = roc_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot(fpr, tpr, label=f"ROC-AUC {report.metrics['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false-match rate", ylabel="true-match rate", title="ROC")
    ax.legend(loc="lower right")
    plots["roc"] = _png(fig)

    precision, recall, _ = precision_recall_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot(recall, precision, label=f"AP {report.metrics['average_precision']:.3f}")
    ax.scatter([report.metrics["recall"]], [report.metrics["precision"]], c="red", zorder=3, label="stored threshold")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    plots["pr"] = _png(fig)

    fnr = 1 - tpr
    keep = (fpr > 0) & (fnr > 0) & (fpr < 1) & (fnr < 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    if keep.any():
        ax.plot(norm.ppf(fpr[keep]), norm.ppf(fnr[keep]))
        ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5])
        ax.set_xticks(norm.ppf(ticks), [f"{x:g}" for x in ticks])
        ax.set_yticks(norm.ppf(ticks), [f"{x:g}" for x in ticks])
    ax.set(xlabel="false-match rate", ylabel="false-non-match rate", title=f"DET (EER {report.metrics.get('eer', 0):.3f})")
    plots["det"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    bins = np.linspace(min(s.min(), t), max(s.max(), t), 40)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, label="different", density=True)
    ax.hist(s[y == 1], bins=bins, alpha=0.6, label="same", density=True)
    ax.axvline(t, c="black", ls="--", label=f"threshold {t:.3f}")
    ax.set(xlabel="score (cosine)", ylabel="density", title="Scores of same vs different pairs")
    ax.legend()
    plots["hist"] = _png(fig)

    if report.probabilities is not None:
        p = report.probabilities
        edges = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
        conf = [p[which == b].mean() for b in range(10) if (which == b).any()]
        acc = [y[which == b].mean() for b in range(10) if (which == b).any()]
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.plot(conf, acc, marker="o")
        ax.set(xlabel="predicted P(same)", ylabel="observed share same",
               title=f"Reliability (ECE {report.metrics.get('ece', float('nan')):.3f})")
        plots["reliability"] = _png(fig)
    return plots


def _error_rows(report: EvaluationReport, left: Sequence[str], right: Sequence[str], n: int) -> tuple[list, list]:
    y, s, t = report.labels, report.scores, report.metrics["threshold"]
    false_match = np.nonzero((y == 0) & (s >= t))[0]
    false_non_match = np.nonzero((y == 1) & (s < t))[0]
    fm = false_match[np.argsort(-s[false_match])][:n]
    fnm = false_non_match[np.argsort(s[false_non_match])][:n]
    return ([(i, s[i], left[i], right[i]) for i in fm], [(i, s[i], left[i], right[i]) for i in fnm])


def _shown(records: Sequence, serializer: RecordSerializer) -> list[str]:
    """What the report shows of each record: image references as they are, other records as serialised text."""
    from twinnet.data.images import is_image_ref

    return [r if isinstance(r, str) and is_image_ref(r) else serializer(r) for r in records]


def _record_html(shown: str) -> str:
    """A record cell: the image itself (a thumbnail) with its path for image records, else the escaped text."""
    from twinnet.data.images import is_image_ref, thumbnail_png
    from twinnet.errors import TwinnetError

    if is_image_ref(shown):
        try:
            data = base64.b64encode(thumbnail_png(shown)).decode("ascii")
            return (f'<img class="pair" alt="image" src="data:image/png;base64,{data}"><br>'
                    f"<small>{html.escape(shown)}</small>")
        except TwinnetError:
            pass  # an image that no longer reads is shown by its path
    return html.escape(shown)


def render_html(report: EvaluationReport, pairs: PairDataset, serializer: RecordSerializer, *,
                title: str = "twinnet evaluation", errors: int = 10) -> str:
    if report.scores is None or report.labels is None:
        raise ValueError("the evaluation report carries no scores")
    plots = _plots(report)
    left, right = _shown(pairs.left, serializer), _shown(pairs.right, serializer)
    false_matches, false_non_matches = _error_rows(report, left, right, errors)
    esc = html.escape
    metric_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td><td>{esc(ci)}</td>"
                          f"<td>{'' if not report.baseline or not isinstance(report.baseline.get(k), float) else f'{report.baseline[k]:.4f}'}</td></tr>"
                          for k, v, ci in report.rows())
    subset_rows = "".join(f"<tr><td>{esc(name)}</td><td>{sub['pairs']}</td><td>{sub['positives']}</td>"
                          f"<td>{sub['f1']:.4f}</td><td>{sub.get('tfidf_f1', float('nan')):.4f}</td></tr>"
                          for name, sub in report.subsets.items())

    def error_table(rows):
        if not rows:
            return "<p>none</p>"
        body = "".join(f"<tr><td>{i}</td><td>{score:.4f}</td><td>{_record_html(a)}</td><td>{_record_html(b)}</td></tr>"
                       for i, score, a, b in rows)
        return f"<table><tr><th>pair</th><th>score</th><th>left record</th><th>right record</th></tr>{body}</table>"

    images = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>'
                     for name, data in plots.items())
    c = report.metrics["confusion"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
figure {{ display: inline-block; margin: 0.5em; }} td:nth-child(3), td:nth-child(4) {{ max-width: 40em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(report.name)}: {report.metrics['pairs']} pairs, {report.metrics['positives']} same. Decision: same when
score &ge; <b>{report.metrics['threshold']:.4f}</b> (fitted on validation, applied unchanged).</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>twinnet</th><th>95% interval</th><th>char TF-IDF</th></tr>{metric_rows}</table>
<p>confusion: tp {c['tp']}, fp {c['fp']}, fn {c['fn']}, tn {c['tn']}</p>
{'<h2>Seen vs unseen records</h2><table><tr><th>subset</th><th>pairs</th><th>same</th><th>F1</th><th>TF-IDF F1</th></tr>' + subset_rows + '</table>' if subset_rows else ''}
<h2>Plots</h2>
<div id="plots">{images}</div>
<h2>Hardest errors</h2>
<h3>False matches with the highest scores</h3>{error_table(false_matches)}
<h3>False non-matches with the lowest scores</h3>{error_table(false_non_matches)}
<script>
window.addEventListener("load", function () {{
  var ok = Array.prototype.filter.call(document.images, function (im) {{ return im.naturalWidth > 0; }});
  document.body.setAttribute("data-images-loaded", String(ok.length));
}});
</script>
</body></html>
"""


def write_report(path: str | os.PathLike[str], report: EvaluationReport, pairs: PairDataset,
                 serializer: RecordSerializer, **options) -> Path:
    text = render_html(report, pairs, serializer, **options)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
