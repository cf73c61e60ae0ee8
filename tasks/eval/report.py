"""Evaluation outputs: metrics.json, a markdown table, PR / ROC curves and qualitative panels (PNG)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.conditions import ADVERSE, CLEAR  # noqa: E402
from tasks.eval.compare import INTERVALS, cell, save_figure  # noqa: E402
from tasks.imageio import write_bytes_atomic, write_rgb  # noqa: E402

COLUMNS = ("auroc", "ap", "fpr95", "f1_best", "siou", "ppv", "f1_components")


def several_scores(results: list[dict]) -> bool:
    """Whether the results hold more than one score (then every row, curve and panel names its score)."""
    return len({r.get("score") for r in results if "error" not in r}) > 1


def result_label(r: dict, several: bool) -> str:
    """``dataset``, or ``dataset [score]`` among several scores."""
    return f"{r['name']} [{r['score']}]" if several and "error" not in r else r["name"]


def _in_percent(m: dict) -> dict:
    """The table's metrics of one result in percent, with ``<metric>_lo`` / ``_hi``: its 95 % bootstrap interval."""
    row = {c: round(100 * m[c], 2) for c in COLUMNS if c in m}
    ci = m.get("intervals") or {}
    for c in INTERVALS:
        if c in ci and np.isfinite(ci[c]).all():
            row[f"{c}_lo"], row[f"{c}_hi"] = (round(100 * v, 2) for v in ci[c])
    return row


def table_rows(results: list[dict]) -> list[dict]:
    """One row per dataset (and score) and per tagged condition, metrics in percent as papers report them (AUROC,
    AP and FPR95 with the bounds of their 95 % intervals)."""
    rows = []
    for r in results:
        if "error" in r:
            rows.append({"dataset": r["name"], "score": None, "condition": "error"})
            continue
        m, head = r["metrics"], {"dataset": r["name"], "score": r.get("score")}
        rows.append(head | {"condition": "all", **_in_percent(m)})
        for cond, cm in m.get("conditions", {}).items():
            row = head | {"condition": cond}
            row |= _in_percent(cm) if "error" not in cm else {"auroc": None}
            rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as markdown (AUROC, AP, FPR95 with their 95 % intervals in brackets); a ``score`` column when they
    hold more than one score."""
    head = ["dataset", *(["score"] if len({r.get("score") for r in rows} - {None}) > 1 else []), "condition"]
    head += COLUMNS
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (len(head) - len(COLUMNS)) + "---:|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r, h) for h in head) + " |")
    return "\n".join(lines)


def plot_curves(results: list[dict], out: Path) -> tuple[Path, Path]:
    roc, pr = out / "roc.png", out / "pr.png"
    for path, (x, y, xl, yl) in (
        (roc, ("fpr", "tpr", "false-positive rate", "true-positive rate")),
        (pr, ("recall", "precision", "recall", "precision")),
    ):
        fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
        several = several_scores(results)
        for r in results:
            if "error" in r:
                continue
            m, name = r["metrics"], result_label(r, several)
            label = f"{name} (AUROC {100 * m['auroc']:.1f})" if x == "fpr" else f"{name} (AP {100 * m['ap']:.1f})"
            ax.plot(r["curves"][x], r["curves"][y], label=label)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return roc, pr


def _yerr(conds: dict, names: list[str], metric: str) -> np.ndarray | None:
    """Error bars (2×n, percent) from the conditions' 95 % intervals; None when none has one."""
    if not any("intervals" in conds[c] for c in names):
        return None
    err = []
    for c in names:
        lo, hi = conds[c].get("intervals", {}).get(metric, (np.nan, np.nan))
        v = conds[c][metric]
        err.append((max(0.0, v - lo), max(0.0, hi - v)))
    return np.nan_to_num(100 * np.array(err, float).T)


def condition_chart(results: list[dict], path: Path, title: str = "") -> Path | None:
    """AP (↑) and FPR95 (↓) per tagged condition with their 95 % intervals, one row of panels per dataset that has
    conditions (clear in blue, each adverse condition in orange, their pool ``adverse`` in red); None when no
    dataset has them."""
    tagged = [r for r in results if "error" not in r and r["metrics"].get("conditions")]
    if not tagged:
        return None
    fig, axes = plt.subplots(len(tagged), 2, figsize=(9, 0.6 + 2.6 * len(tagged)), dpi=120, squeeze=False)
    for i, r in enumerate(tagged):
        conds = {c: m for c, m in r["metrics"]["conditions"].items() if "error" not in m}
        names = list(conds)
        colors = ["tab:blue" if c == CLEAR else "tab:red" if c == ADVERSE else "tab:orange" for c in names]
        for j, (metric, label) in enumerate((("ap", "AP % (↑)"), ("fpr95", "FPR95 % (↓)"))):
            ax = axes[i][j]
            vals = [100 * conds[c][metric] for c in names]
            bars = ax.bar(range(len(names)), vals, color=colors, yerr=_yerr(conds, names, metric), error_kw={"lw": 0.7})
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 105)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.set_title(f"{result_label(r, several_scores(results))}: {label.split()[0]} per condition", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def panel(image: np.ndarray, label: np.ndarray, score: np.ndarray, width: int = 384) -> np.ndarray:
    """image | ground truth (anomaly red, void grey) | score map (colour scale over the image's range)."""
    gt = np.zeros_like(image)
    gt[label == 1] = (230, 30, 30)
    gt[label == 255] = (90, 90, 90)
    lo, hi = np.percentile(score, [1, 99])
    norm = np.clip((score - lo) / max(hi - lo, 1e-12), 0, 1)
    heat = cv2.cvtColor(cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    h = round(image.shape[0] * width / image.shape[1])
    return np.hstack([cv2.resize(a, (width, h), interpolation=cv2.INTER_AREA) for a in (image, gt, heat)])


def write_eval_report(results: list[dict], out: str | Path, settings: dict) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, several = table_rows(results), several_scores(results)
    datasets = {result_label(r, several): {"error": r["error"]} if "error" in r else r["metrics"] for r in results}
    metrics = {"settings": settings, "datasets": datasets, "table": rows}
    write_bytes_atomic(out / "metrics.json", json.dumps(metrics, indent=1, default=float).encode())
    roc, pr = plot_curves(results, out)
    files = {"metrics": out / "metrics.json", "roc": roc, "pr": pr}
    chart = condition_chart(results, out / "conditions.png", f"{settings['model']} ({settings['score']})")
    if chart is not None:
        files["conditions"] = chart
    for r in results:
        if r.get("panels"):
            key = f"panels_{r['name']}" + (f"_{re.sub(r'[^A-Za-z0-9_.-]+', '_', r['score'])}" if several else "")
            p = out / f"{key}.png"
            write_rgb(p, np.vstack([panel(img, lab, sc) for _, img, lab, sc in r["panels"]]))
            files[key] = p
    md = [
        "# anomalyforge evaluation",
        "",
        f"score `{settings['score']}`{' (Gaussian-smoothed)' if settings.get('smoothing') else ''}, "
        f"model `{settings['model']}` ({settings.get('model_kind', 'torchscript')}); values in %, "
        "[95 % interval] from an image-level bootstrap.",
        "",
        markdown_table(rows),
        "",
        *[f"**{r['name']} failed:** {r['error']}" for r in results if "error" in r],
        "",
        "![ROC](roc.png) ![PR](pr.png)",
        "",
        *(["![per condition](conditions.png)", ""] if chart is not None else []),
        *[f"![{k}]({v.name})" for k, v in files.items() if k.startswith("panels_")],
        "",
    ]
    write_bytes_atomic(out / "report.md", "\n".join(md).encode())
    files["report"] = out / "report.md"
    files["table"] = out / "report.md"
    return files
