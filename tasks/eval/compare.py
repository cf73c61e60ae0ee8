"""The comparison table (``make compare``): methods and post-hoc baselines × datasets, as our users put it in a
paper. Rows come from ``tasks.eval.scoring`` results; outputs are ``compare.md``, ``compare.csv``,
``compare.json`` and a bar chart ``compare.png``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.imageio import write_bytes_atomic  # noqa: E402

PERCENT = ("ap", "fpr95", "auroc", "f1_components", "miou", "closed_set_agreement")
COLUMNS = ("model", "kind", "score", "dataset", "images", *PERCENT, "steps")
HEADERS = {
    "ap": "AP",
    "fpr95": "FPR95",
    "auroc": "AUROC",
    "f1_components": "mean F1 (components)",
    "miou": "closed-set mIoU",
    "closed_set_agreement": "agreement ŷ/ỹ",
}


def compare_rows(entry: dict, results: list[dict]) -> list[dict]:
    """One row per dataset of one model; ``entry``: model (name), kind (trained | post-hoc), score, steps."""
    rows = []
    for r in results:
        row = {k: entry.get(k) for k in ("model", "kind", "score", "steps")} | {"dataset": r["name"]}
        if "error" in r:  # a dataset that could not be evaluated: a row of dashes, the reason below the table
            rows.append(row | {"images": None, **dict.fromkeys(PERCENT)} | {"error": r["error"]})
            continue
        m = r["metrics"]
        row["images"] = m.get("images")
        for k in PERCENT:
            row[k] = None if m.get(k) is None else round(100 * float(m[k]), 2)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = [HEADERS.get(c, c) for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(COLUMNS) - 4)]
    for r in rows:
        lines.append("| " + " | ".join("–" if r.get(c) is None else str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path) -> Path:
    """AP (higher is better) and FPR95 (lower is better) per model, one column of panels per dataset."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(2, len(datasets), figsize=(3 + 3.2 * len(datasets), 6.4), dpi=120, squeeze=False)
    for j, ds in enumerate(datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        names = [r["model"] for r in sub]
        colors = ["tab:blue" if r["kind"] == "trained" else "tab:gray" for r in sub]
        for i, (metric, label) in enumerate((("ap", "AP % (↑)"), ("fpr95", "FPR95 % (↓)"))):
            ax = axes[i][j]
            vals = [np.nan if r[metric] is None else r[metric] for r in sub]
            bars = ax.barh(range(len(sub)), vals, color=colors)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
            ax.set_yticks(range(len(sub)), names if j == 0 else [""] * len(sub), fontsize=8)
            ax.invert_yaxis()
            top = np.nanmax(vals) if np.isfinite(vals).any() else 1.0
            ax.set_xlim(0, 100 if metric == "fpr95" else min(100, max(5.0, 1.25 * top)))  # small APs stay legible
            ax.set_xlabel(label, fontsize=8)
            ax.grid(axis="x", alpha=0.3)
            if i == 0:
                ax.set_title(ds, fontsize=9)
    fig.suptitle("trained methods (blue), post-hoc scores of the frozen segmenter (grey)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def write_compare(rows: list[dict], details: dict, out: str | Path) -> dict[str, Path]:
    """``compare.md`` (the table, settings, the chart), ``compare.csv``, ``compare.json``, ``compare.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    w.writeheader()
    w.writerows({c: r.get(c) for c in COLUMNS} for r in rows)
    write_bytes_atomic(out / "compare.csv", buf.getvalue().encode())
    write_bytes_atomic(out / "compare.json", json.dumps({"rows": rows} | details, indent=1, default=str).encode())
    chart = bar_chart(rows, out / "compare.png")
    md = [
        f"# {details.get('name', 'compare')}: methods × datasets",
        "",
        f"Shards `{details.get('shards')}`; frozen segmenter `{details.get('segmenter')}` "
        f"(`{details.get('segmenter_checkpoint')}`); seed {details.get('seed')}; "
        f"{details.get('max_steps')} steps per method. Values in %. mIoU: the scored model's closed-set "
        "prediction against the shards' trainIds (held-in split only); agreement: inlier pixels where ŷ keeps "
        "the frozen class (methods only).",
        "",
        markdown(rows),
        "",
        *[f"**{r['model']} on {r['dataset']} failed:** {r['error']}" for r in rows if r.get("error")],
        "",
        f"![comparison]({chart.name})",
        "",
    ]
    write_bytes_atomic(out / "compare.md", "\n".join(md).encode())
    return {"table": out / "compare.md", "csv": out / "compare.csv", "json": out / "compare.json", "chart": chart}
