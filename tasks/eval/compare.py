"""The comparison table (``make compare``): methods and post-hoc baselines × datasets (and × conditions, where a
dataset is tagged with them), as our users put it in a paper. Rows come from ``tasks.scoring`` results, with the
95 % bootstrap intervals of AP, FPR95 and AUROC (``tasks.intervals``), the mean ± std over training seeds
(``aggregate_seeds``) and a flag on trained rows no different from a post-hoc score (``flag_untrained``);
outputs are ``compare.md``, ``compare.csv``, ``compare.json``, a bar chart ``compare.png``, ``conditions.png``
(per condition), ``seeds.csv`` (every seed's rows) and, when methods were trained on more than one shard
version (with and without weather, say, or the arms of an ablation), the per-condition difference of each
method in ``study.csv`` / ``study.png``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from schemas.registries import WEATHER  # noqa: E402
from tasks.conditions import ADVERSE, CLEAR, families, family_of, split_tag  # noqa: E402
from tasks.imageio import write_bytes_atomic  # noqa: E402
from tasks.intervals import paired_difference  # noqa: E402

PERCENT = ("ap", "fpr95", "auroc", "f1_components", "miou", "closed_set_agreement")
INTERVALS = ("ap", "fpr95", "auroc")  # the metrics with a bootstrap interval (tasks.intervals)
BOUNDS = tuple(f"{m}_{end}" for m in INTERVALS for end in ("lo", "hi"))
COLUMNS = ("model", "kind", "segmenter", "score", "train", "dataset", "condition", "images", *PERCENT, "steps", "lr")
STDS = tuple(f"{m}_std" for m in INTERVALS)
CSV_COLUMNS = (*COLUMNS, *BOUNDS, *STDS, "seeds", "seed", "flag")
DELTAS = ("ap", "fpr95", "auroc")
PAIRED = ("ap", "fpr95")  # the differences with a paired bootstrap interval in a study
HEADERS = {
    "ap": "AP",
    "fpr95": "FPR95",
    "auroc": "AUROC",
    "f1_components": "mean F1 (components)",
    "miou": "closed-set mIoU",
    "closed_set_agreement": "agreement ŷ/ỹ",
}


def _percent(m: dict) -> dict:
    """The metrics in percent, with ``<metric>_lo`` / ``_hi``: the 95 % interval where the result has one."""
    out = {k: None if m.get(k) is None else round(100 * float(m[k]), 2) for k in PERCENT}
    ci = m.get("intervals") or {}
    for k in INTERVALS:
        lo, hi = ci.get(k, (None, None))
        ok = lo is not None and np.isfinite(lo) and np.isfinite(hi)
        out[f"{k}_lo"], out[f"{k}_hi"] = (round(100 * lo, 2), round(100 * hi, 2)) if ok else (None, None)
    return out


def cell(r: dict, k: str, digits: int = 2) -> str:
    """A table cell: ``45.9 [41.2, 50.3]`` with the row's 95 % interval, ``45.9 ± 1.2 [41.2, 50.3]`` with the
    standard deviation over training seeds too, the value alone without either."""
    if r.get(k) is None:
        return "–"
    if r.get(f"{k}_lo") is None and r.get(f"{k}_std") is None:
        return str(r[k])
    text = f"{r[k]:.{digits}f}"
    if r.get(f"{k}_std") is not None:
        text += f" ± {r[f'{k}_std']:.{digits}f}"
    if r.get(f"{k}_lo") is not None:
        text += f" [{r[f'{k}_lo']:.{digits}f}, {r[f'{k}_hi']:.{digits}f}]"
    return text


SEED_KEY = ("model", "kind", "segmenter", "score", "train", "dataset", "condition")


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """Rows of the same model, training version, dataset and condition trained with several seeds (``seed``) as
    one row: each metric's mean over the seeds, ``<metric>_std`` its standard deviation (n − 1), the interval
    bounds averaged (the image-sampling interval of a typical seed), ``seeds`` how many. Rows without a seed
    (post-hoc scores) pass unchanged; the first row of a group keeps its place."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = tuple(r.get(k) for k in SEED_KEY) if r.get("seed") is not None else ("unseeded", id(r))
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        first = group[0]
        if first.get("seed") is None:
            out.append(first)
            continue
        row = {k: v for k, v in first.items() if k != "seed"} | {"seeds": len(group)}
        for k in (*PERCENT, *BOUNDS):
            vals = [g[k] for g in group if g.get(k) is not None]
            row[k] = round(float(np.mean(vals)), 2) if len(vals) == len(group) else None
        for k in INTERVALS:
            vals = [g[k] for g in group if g.get(k) is not None]
            row[f"{k}_std"] = round(float(np.std(vals, ddof=1)), 2) if len(vals) == len(group) > 1 else None
        out.append(row)
    return out


def flag_untrained(rows: list[dict], resampled: dict[tuple, dict], margin: float = 1.0) -> list[dict]:
    """``flag`` on the trained rows (condition ``all``) whose AP cannot be told from a post-hoc score of the same
    frozen segmenter: on every dataset the paired 95 % bootstrap interval of AP(method) − AP(score) lies within
    ± ``margin`` points (an equivalence test: the row's head has not moved far enough from the frozen network to
    change what it finds). ``resampled``: ``{(model, train, dataset): ImageHistograms.resampled}``, post-hoc
    rows under train ``–``. Rows are returned with the flag set; others unchanged."""
    by_model: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("condition", "all") == "all" and r["kind"] == "trained":
            by_model.setdefault((r["model"], r["train"], r.get("segmenter")), []).append(r)
    flags: dict[tuple, str] = {}
    for (model, train, segmenter), mine in by_model.items():
        scores = {r["score"] for r in rows if r["kind"] == "post-hoc" and r.get("segmenter") == segmenter}
        for score in sorted(scores):
            diffs = []
            for r in mine:
                a = resampled.get((model, train, r["dataset"]))
                b = resampled.get((f"{segmenter} + {score}", "–", r["dataset"]))
                if a is None or b is None or len(a["ap"]) != len(b["ap"]):
                    diffs = []
                    break
                diffs.append(paired_difference(a, b))
            if diffs and all(abs(lo) <= margin / 100 and abs(hi) <= margin / 100 for _, lo, hi in diffs):
                worst = max(max(abs(lo), abs(hi)) for _, lo, hi in diffs)
                flags[(model, train)] = (
                    f"not trained enough: AP within ±{100 * worst:.2f} points of {segmenter} + {score} on every "
                    f"dataset (paired bootstrap, 95 %); raise the steps or the lr (lr_sweep)"
                )
                break
    return [r | {"flag": flags[(r["model"], r["train"])]} if (r["model"], r["train"]) in flags else r for r in rows]


def compare_rows(entry: dict, results: list[dict]) -> list[dict]:
    """One row per dataset of one model (condition ``all``), then one per tagged condition of that dataset;
    ``entry``: model (name), kind (trained | post-hoc), segmenter (the frozen network it ran on), score, train (the
    shard version it was trained on), steps."""
    rows = []
    for r in results:
        row = {k: entry.get(k) for k in ("model", "kind", "segmenter", "score", "train", "steps")}
        row["lr"] = None if entry.get("lr") is None else float(f"{entry['lr']:.4g}")  # 7.5e-4, not 0.000749999…
        if entry.get("seed") is not None:
            row["seed"] = entry["seed"]
        row["dataset"] = r["name"]
        if "error" in r:  # a dataset that could not be evaluated: a row of dashes, the reason below the table
            rows.append(row | {"condition": "all", "images": None, **_percent({})} | {"error": r["error"]})
            continue
        m = r["metrics"]
        rows.append(row | {"condition": "all", "images": m.get("images")} | _percent(m))
        for cond, cm in m.get("conditions", {}).items():
            if "error" in cm:  # e.g. no anomaly pixel in that condition
                rows.append(row | {"condition": cond, "images": None, **_percent({})})
            else:
                rows.append(row | {"condition": cond, "images": cm.get("images")} | _percent(cm))
    return rows


def study_rows(rows: list[dict], base: str, resampled: dict[tuple, dict] | None = None) -> list[dict]:
    """Per trained method, dataset and condition: each other training version's AP / FPR95 / AUROC minus those of
    the model trained on ``base`` (percentage points; ΔFPR95 < 0 is better). With ``resampled``
    (``{(model, train, dataset): ImageHistograms.resampled}``), the condition-``all`` rows also get the paired 95 %
    bootstrap interval of ΔAP and ΔFPR95 (``d_ap_lo`` … ``d_fpr95_hi``): both models are scored on the same
    resamples of the same images, so the interval holds only what the training version changes, and is much
    narrower than the two rows' own intervals side by side (``tasks.intervals.paired_difference``)."""
    key = lambda r: (r["model"], r["dataset"], r["condition"])  # noqa: E731
    ref = {key(r): r for r in rows if r["kind"] == "trained" and r["train"] == base and r.get("ap") is not None}
    out = []
    for r in rows:
        if r["kind"] != "trained" or r["train"] == base or r.get("ap") is None or key(r) not in ref:
            continue
        b = ref[key(r)]
        d = {f"d_{k}": None if r[k] is None or b[k] is None else round(r[k] - b[k], 2) for k in DELTAS}
        a_res = (resampled or {}).get((r["model"], r["train"], r["dataset"]))
        b_res = (resampled or {}).get((r["model"], base, r["dataset"]))
        paired = r["condition"] == "all" and a_res is not None and b_res is not None
        for k in PAIRED:
            lo = hi = None
            if paired and len(a_res[k]) == len(b_res[k]):
                _, lo, hi = paired_difference(a_res, b_res, k)
            d[f"d_{k}_lo"], d[f"d_{k}_hi"] = (None, None) if lo is None or not np.isfinite(lo) else _points(lo, hi)
        out.append(
            {"model": r["model"], "dataset": r["dataset"], "condition": r["condition"], "base": base}
            | {"train": r["train"]}
            | {f"{k}_base": b[k] for k in DELTAS}
            | {k: r[k] for k in DELTAS}
            | d
        )
    return out


def _points(lo: float, hi: float) -> tuple[float, float]:
    return round(100 * lo, 2), round(100 * hi, 2)


def markdown(rows: list[dict]) -> str:
    """The table of every model on every dataset (condition ``all``; AP, FPR95 and AUROC with their 95 %
    intervals in brackets, ± the standard deviation over seeds), the flagged rows' reasons (⚠), then, for each
    dataset tagged with conditions, one table of AP / FPR95 per condition (the rows of every condition, and the
    interval bounds, are in ``compare.csv``)."""
    head = [HEADERS.get(c, c) for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 7 + "---:|" * (len(COLUMNS) - 7)]
    flags: dict[str, str] = {}
    for r in rows:
        if r.get("condition", "all") == "all":
            cells = [cell(r, c, 1) for c in COLUMNS]
            if r.get("flag"):
                cells[0] += " ⚠"
                flags.setdefault(f"{r['model']}** (trained on {r.get('train')})", r["flag"])
            lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"⚠ **{model}: {why}" for model, why in flags.items()] if flags else []
    return "\n".join(lines + condition_markdown(rows))


def condition_markdown(rows: list[dict]) -> list[str]:
    """Per dataset with conditions: a row per model (and training version), a column per condition, AP / FPR95."""
    lines: list[str] = []
    tagged = [r for r in rows if r.get("condition", "all") != "all"]
    for ds in dict.fromkeys(r["dataset"] for r in tagged):
        sub = [r for r in tagged if r["dataset"] == ds]
        conds = list(dict.fromkeys(r["condition"] for r in sub))
        cells: dict[tuple, dict] = {}
        for r in sub:
            ap, fpr = ("–" if r[k] is None else f"{r[k]:.1f}" for k in ("ap", "fpr95"))
            cells.setdefault((r["model"], r["kind"], r["train"]), {})[r["condition"]] = f"{ap} / {fpr}"
        lines += ["", f"**{ds}, per condition: AP / FPR95 (%)**", ""]
        lines += ["| model | train | " + " | ".join(conds) + " |", "|---|---|" + "---:|" * len(conds)]
        for (model, _, train), by in cells.items():
            lines.append(f"| {model} | {train or '–'} | " + " | ".join(by.get(c, "–") for c in conds) + " |")
    return lines


def _label(r: dict, trains: int) -> str:
    return f"{r['model']} [{r['train']}]" if trains > 1 and r["kind"] == "trained" else r["model"]


def save_figure(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (a reader never sees half a picture); closes it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def bar_chart(rows: list[dict], path: Path) -> Path:
    """AP (higher is better) and FPR95 (lower is better) per model, one column of panels per dataset."""
    trains = len({r["train"] for r in rows if r["kind"] == "trained"})
    rows = [r for r in rows if r["condition"] == "all"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(2, len(datasets), figsize=(3 + 3.2 * len(datasets), 6.4), dpi=120, squeeze=False)
    for j, ds in enumerate(datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        names = [_label(r, trains) for r in sub]
        colors = ["tab:blue" if r["kind"] == "trained" else "tab:gray" for r in sub]
        for i, (metric, label) in enumerate((("ap", "AP % (↑)"), ("fpr95", "FPR95 % (↓)"))):
            ax = axes[i][j]
            vals = [np.nan if r[metric] is None else r[metric] for r in sub]
            bars = ax.barh(range(len(sub)), vals, color=colors, xerr=_errors(sub, metric), error_kw={"lw": 0.8})
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
            ax.set_yticks(range(len(sub)), names if j == 0 else [""] * len(sub), fontsize=8)
            ax.invert_yaxis()
            highs = [np.nan if r.get(f"{metric}_hi") is None else r[f"{metric}_hi"] for r in sub]  # error bars too
            top = np.nanmax(vals + highs) if np.isfinite(vals + highs).any() else 1.0
            ax.set_xlim(0, 100 if metric == "fpr95" else min(100, max(5.0, 1.25 * top)))  # small APs stay legible
            ax.set_xlabel(label, fontsize=8)
            ax.grid(axis="x", alpha=0.3)
            if i == 0:
                ax.set_title(ds, fontsize=9)
    fig.suptitle(
        "trained methods (blue), post-hoc scores of the frozen segmenter (grey); bars: 95 % bootstrap intervals",
        fontsize=9,
    )
    return save_figure(fig, path)


def _errors(rows: list[dict], metric: str) -> np.ndarray | None:
    """Error bars (2×n: below, above) from the rows' 95 % intervals; None when no row has one."""
    if not any(r.get(f"{metric}_lo") is not None for r in rows):
        return None
    below = [np.nan if r.get(f"{metric}_lo") is None else max(0.0, r[metric] - r[f"{metric}_lo"]) for r in rows]
    above = [np.nan if r.get(f"{metric}_hi") is None else max(0.0, r[f"{metric}_hi"] - r[metric]) for r in rows]
    return np.nan_to_num(np.array([below, above], float))


def _grouped_bars(ax, sub: list[dict], series, metric: str, cmap) -> None:
    """Bars of ``metric`` per condition (x), one bar per ``series(row)`` (the models), side by side."""
    conds = list(dict.fromkeys(r["condition"] for r in sub))
    names = list(dict.fromkeys(series(r) for r in sub))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        vals = {r["condition"]: r[metric] for r in sub if series(r) == name}
        ys = [np.nan if vals.get(c) is None else vals[c] for c in conds]
        x = np.arange(len(conds)) + (k - (len(names) - 1) / 2) * width
        mine = {r["condition"]: r for r in sub if series(r) == name}
        err = _errors([mine.get(c, {metric: None}) for c in conds], metric)
        ax.bar(x, ys, width, label=name, color=cmap(k % cmap.N), yerr=err, error_kw={"lw": 0.6})
    ax.set_xticks(range(len(conds)), conds, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def condition_chart(rows: list[dict], path: Path) -> Path | None:
    """AP and FPR95 per condition (x) for every model (bars), one row of panels per dataset with conditions."""
    trains = len({r["train"] for r in rows if r["kind"] == "trained"})
    tagged = [r for r in rows if r["condition"] != "all"]
    datasets = list(dict.fromkeys(r["dataset"] for r in tagged))
    if not datasets:
        return None
    fig, axes = plt.subplots(len(datasets), 2, figsize=(14, 0.8 + 3.4 * len(datasets)), dpi=110, squeeze=False)
    for i, ds in enumerate(datasets):
        sub = [r for r in tagged if r["dataset"] == ds]
        for j, (metric, label) in enumerate((("ap", "AP % (↑)"), ("fpr95", "FPR95 % (↓)"))):
            _grouped_bars(axes[i][j], sub, lambda r: _label(r, trains), metric, plt.get_cmap("tab20"))
            axes[i][j].set_ylabel(label, fontsize=8)
            axes[i][j].set_title(f"{ds}: {label.split()[0]} per condition", fontsize=9)
        axes[i][1].legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def study_chart(study: list[dict], path: Path) -> Path | None:
    """ΔAP and ΔFPR95 per condition for each method (one row of panels per dataset and compared version)."""
    groups = list(dict.fromkeys((r["dataset"], r["train"]) for r in study))
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 0.8 + 3.2 * len(groups)), dpi=110, squeeze=False)
    for i, (ds, train) in enumerate(groups):
        sub = [r for r in study if (r["dataset"], r["train"]) == (ds, train)]
        for j, (metric, label) in enumerate((("d_ap", "ΔAP, points (↑)"), ("d_fpr95", "ΔFPR95, points (↓)"))):
            _grouped_bars(axes[i][j], sub, lambda r: r["model"], metric, plt.get_cmap("tab10"))
            axes[i][j].axhline(0, color="black", lw=0.8)
            axes[i][j].set_ylabel(label, fontsize=8)
            axes[i][j].set_title(f"{ds}: trained on {train} minus on {sub[0]['base']}", fontsize=9)
        axes[i][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


ROBUSTNESS = ("dataset", "family", "model", "kind", "train", "clear_ap", "clear_fpr95", "adverse_ap", "adverse_fpr95")
ROBUSTNESS += ("ap_ratio", "conditions")


def robustness_rows(rows: list[dict]) -> list[dict]:
    """The robustness summary: per dataset, condition family and model with a clear row, AP / FPR95 on clear, the
    mean over the family's conditions of each condition's AP / FPR95 (each condition pooled over its severities),
    and ``ap_ratio`` = mean adverse AP / clear AP (1: no loss; what to rank methods by). Sorted by that ratio,
    best first. ``conditions``: {condition: (AP, FPR95)}."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cond = r.get("condition", "all")
        if cond in ("all", ADVERSE) or split_tag(cond)[1] is not None or r.get("ap") is None:
            continue
        groups.setdefault((r["dataset"], r["model"], r["kind"], r["train"]), {})[cond] = r
    out = []
    for (ds, model, kind, train), by in groups.items():
        clear = by.get(CLEAR)
        if clear is None:
            continue
        fams: dict[str, dict[str, tuple]] = {}
        for cond, r in by.items():
            if cond != CLEAR and cond in WEATHER:
                fams.setdefault(family_of(cond), {})[cond] = (r["ap"], r["fpr95"])
        for fam, conds in fams.items():
            ap = float(np.mean([a for a, _ in conds.values()]))
            fpr = [f for _, f in conds.values() if f is not None]
            out.append(
                {"dataset": ds, "family": fam, "model": model, "kind": kind, "train": train}
                | {"clear_ap": clear["ap"], "clear_fpr95": clear["fpr95"], "adverse_ap": round(ap, 2)}
                | {"adverse_fpr95": round(float(np.mean(fpr)), 2) if fpr else None}
                | {"ap_ratio": round(ap / clear["ap"], 3) if clear["ap"] else None, "conditions": conds}
            )
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fams = list(families())  # registry order: weather, then corruption
    out.sort(
        key=lambda r: (
            datasets.index(r["dataset"]),
            fams.index(r["family"]) if r["family"] in fams else len(fams),
            -(r["ap_ratio"] if r["ap_ratio"] is not None else -1),
        )
    )
    return out


def robustness_markdown(summary: list[dict], trains: int = 1) -> str:
    """Per dataset and family: a row per model, best AP ratio first."""
    lines: list[str] = []
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for ds, fam in dict.fromkeys((r["dataset"], r["family"]) for r in summary):
        sub = [r for r in summary if (r["dataset"], r["family"]) == (ds, fam)]
        n = len(sub[0]["conditions"])
        lines += ["", f"**{ds}, {fam} ({n} conditions): clear vs the mean over the conditions**", ""]
        lines += ["| model | clear AP | clear FPR95 | mean adverse AP | mean adverse FPR95 | AP adverse / clear |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for r in sub:
            name = _label(r, trains)
            lines.append(
                f"| {name} | {fmt(r['clear_ap'])} | {fmt(r['clear_fpr95'])} | {fmt(r['adverse_ap'])} | "
                f"{fmt(r['adverse_fpr95'])} | {fmt(r['ap_ratio'], 2)} |"
            )
    return "\n".join(lines)


def robustness_chart(summary: list[dict], family: str, path: Path, trains: int = 1) -> Path | None:
    """A heat map of AP per model (rows, best AP ratio first) and condition (columns, clear first), one panel per
    dataset, for one condition family; each cell carries its AP."""
    sub = [r for r in summary if r["family"] == family]
    datasets = list(dict.fromkeys(r["dataset"] for r in sub))
    if not datasets:
        return None
    conds = list(dict.fromkeys(c for r in sub for c in r["conditions"]))
    n_models = max(sum(r["dataset"] == ds for r in sub) for ds in datasets)
    width = 3.0 + 0.62 * (len(conds) + 2)
    fig, axes = plt.subplots(
        len(datasets), 1, figsize=(width, 0.9 + (0.9 + 0.32 * n_models) * len(datasets)), dpi=110, squeeze=False
    )
    for i, ds in enumerate(datasets):
        rs = [r for r in sub if r["dataset"] == ds]
        grid = np.array(
            [[r["clear_ap"], *(r["conditions"].get(c, (np.nan,))[0] for c in conds), r["adverse_ap"]] for r in rs],
            float,
        )
        ax = axes[i][0]
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(1.0, float(np.nanmax(grid))), aspect="auto")
        for (y, x), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(
                    x,
                    y,
                    f"{v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v < 0.6 * im.norm.vmax else "black",
                )
        ax.set_xticks(range(len(conds) + 2), [CLEAR, *conds, "mean"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(
            range(len(rs)),
            [
                f"{_label(r, trains)} ({r['ap_ratio']:.2f})" if r["ap_ratio"] is not None else _label(r, trains)
                for r in rs
            ],
            fontsize=7,
        )
        ax.axvline(len(conds) + 0.5, color="white", lw=1.5)
        ax.set_title(f"{ds}: AP % per {family} condition (AP adverse / clear in brackets)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    return save_figure(fig, path)


def _csv(rows: list[dict], columns, path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns))
    w.writeheader()
    w.writerows({c: r.get(c) for c in columns} for r in rows)
    write_bytes_atomic(path, buf.getvalue().encode())
    return path


def study_markdown(study: list[dict]) -> str:
    """Per dataset and compared version: a row per method, a column per condition, ``ΔAP / ΔFPR95`` in points, ΔAP
    with its paired 95 % interval where there is one and ``*`` when that interval excludes 0 (every value, with
    the base and the other version's AP / FPR95 / AUROC, is in ``study.csv``)."""
    lines: list[str] = []
    fmt = lambda v: "–" if v is None else f"{v:+.1f}"  # noqa: E731
    for ds, train in dict.fromkeys((r["dataset"], r["train"]) for r in study):
        sub = [r for r in study if (r["dataset"], r["train"]) == (ds, train)]
        conds = list(dict.fromkeys(r["condition"] for r in sub))
        cells: dict[str, dict] = {}
        for r in sub:
            ap = fmt(r["d_ap"])
            if r.get("d_ap_lo") is not None:  # the paired interval: does the difference exclude 0?
                ap += f" [{fmt(r['d_ap_lo'])}, {fmt(r['d_ap_hi'])}]" + (" *" if r["d_ap_lo"] * r["d_ap_hi"] > 0 else "")
            cells.setdefault(r["model"], {})[r["condition"]] = f"{ap} / {fmt(r['d_fpr95'])}"
        lines += [f"**{ds}: {train} − {sub[0]['base']}, ΔAP / ΔFPR95 (points)**", ""]
        lines += ["| model | " + " | ".join(conds) + " |", "|---|" + "---:|" * len(conds)]
        lines += [f"| {m} | " + " | ".join(by.get(c, "–") for c in conds) + " |" for m, by in cells.items()]
        lines.append("")
    return "\n".join(lines)


def sweep_markdown(sweeps: dict[str, dict]) -> list[str]:
    """The lr sweep of each method: held-in AP (%) per lr multiplier, the picked one in bold, the lr it trained at."""
    if not sweeps:
        return []
    mults = sorted({m for s in sweeps.values() for m in s["held_in"]}, key=float)
    lines = [
        "## Learning rates: a short sweep per method, scored on the held-in split",
        "",
        f"Held-in AP (%) after {next(iter(sweeps.values()))['steps']} steps at each multiple of the method's lr; "
        "the best (bold) trained the full budget. No benchmark is seen.",
        "",
        "| method | base lr | " + " | ".join(f"×{m}" for m in mults) + " | lr used |",
        "|---|---:|" + "---:|" * len(mults) + "---:|",
    ]
    for name, s in sweeps.items():
        cells = []
        for m in mults:
            ap = s["held_in"].get(m, {}).get("ap")
            text = "–" if ap is None else f"{100 * ap:.1f}"
            cells.append(f"**{text}**" if m == f"{s['picked']:g}" else text)  # the keys are f"{multiplier:g}"
        lines.append(f"| {name} | {s['base_lr']:.2g} | " + " | ".join(cells) + f" | {s['lr']:.2g} |")
    return [*lines, ""]


def arm_rows(label: str, rows: list[dict], first: bool) -> list[dict]:
    """One ablation arm's comparison rows in the ablation's table: its trained rows under ``train = label`` (so the
    table's study gives each arm minus the first); the post-hoc rows — the same frozen network on the same
    benchmarks in every arm — from the first arm only."""
    return [r | {"train": label} if r["kind"] == "trained" else r for r in rows if r["kind"] == "trained" or first]


def write_compare(
    rows: list[dict], details: dict, out: str | Path, resampled: dict[tuple, dict] | None = None
) -> tuple[dict[str, Path], list[dict]]:
    """``compare.md`` (the table, settings, the charts), ``compare.csv``, ``compare.json``, ``compare.png``,
    ``conditions.png`` (datasets tagged with conditions) and, when models were trained on more than one shard
    version, ``study.csv`` / ``study.png`` (with paired intervals of the differences from ``resampled``, see
    ``study_rows``). Returns the files and the study rows (empty for one version)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table": out / "compare.md", "csv": _csv(rows, CSV_COLUMNS, out / "compare.csv")}
    files["json"] = out / "compare.json"
    trains = list(dict.fromkeys(r["train"] for r in rows if r["kind"] == "trained"))
    study = study_rows(rows, trains[0], resampled) if len(trains) > 1 else []
    write_bytes_atomic(
        out / "compare.json", json.dumps({"rows": rows, "study": study} | details, indent=1, default=str).encode()
    )
    chart = files["chart"] = bar_chart(rows, out / "compare.png")
    per_condition = condition_chart(rows, out / "conditions.png")
    if per_condition is not None:
        files["conditions"] = per_condition
    robust = robustness_rows(rows)
    robust_lines: list[str] = []
    if robust:
        flat = [r | {"conditions": json.dumps(r["conditions"])} for r in robust]
        files["robustness"] = _csv(flat, ROBUSTNESS, out / "robustness.csv")
        robust_lines = [
            "## Robustness: clear vs every condition",
            "",
            "Per condition family, each model's AP / FPR95 on the clear images and the mean over the family's "
            "conditions (each condition pooled over its severities); **AP adverse / clear** is the share of its clear "
            "AP a model keeps (1.00: no loss), the rows sorted by it. Every condition and severity is in `compare.csv`.",
            robustness_markdown(robust, len(trains)),
            "",
        ]
        for fam in dict.fromkeys(r["family"] for r in robust):
            chart_path = robustness_chart(robust, fam, out / f"robustness_{fam}.png", len(trains))
            files[f"robustness_{fam}"] = chart_path
            robust_lines += [f"![robustness, {fam}]({chart_path.name})", ""]
    study_lines: list[str] = []
    if study:
        files["study"] = _csv(study, list(study[0]), out / "study.csv")
        study_png = study_chart(study, out / "study.png")
        files["study_chart"] = study_png
        study_lines = [
            f"## Trained on {', '.join(trains[1:])} instead of {trains[0]}: the difference per condition",
            "",
            "Each method trained on each shard version with the same seed, budget and frozen segmenter; Δ = the "
            f"other version minus {trains[0]}, in points (ΔFPR95 < 0 is better); [brackets]: the paired 95 % "
            "bootstrap interval of ΔAP (both models on the same resampled images), * where it excludes 0.",
            "",
            study_markdown(study),
            "",
            f"![per-condition difference]({study_png.name})",
            "",
        ]
    seed_lines: list[str] = []
    if details.get("per_seed_rows"):
        files["seeds"] = _csv(details["per_seed_rows"], CSV_COLUMNS, out / "seeds.csv")
        seed_lines = [
            f"Trained rows: mean ± standard deviation over seeds {details.get('seeds')} (every seed's row "
            "in `seeds.csv`); brackets: the 95 % image-bootstrap interval of a seed, averaged.",
            "",
        ]
    sweep_lines = sweep_markdown(details.get("lr_sweep") or {})
    segmenters = "; ".join(
        f"{kind}: `{s['name']}` (`{s['checkpoint']}`)" for kind, s in details.get("segmenters", {}).items()
    )
    md = [
        f"# {details.get('name', 'compare')}: methods × datasets",
        "",
        f"Shards `{details.get('shards')}`; frozen segmenters {segmenters or '–'}; seed {details.get('seed')}; "
        f"{details.get('max_steps')} steps per method (lr warm-up over the first "
        f"{100 * details.get('lr_warmup', 0):.0f} %, then poly). Values in %, [95 % interval] from an image-level "
        "bootstrap. mIoU: the scored model's closed-set "
        "prediction against the shards' trainIds (held-in split only); agreement: inlier pixels where ŷ keeps "
        "the frozen class (methods only). Condition `all`: every image of the dataset; `adverse`: every "
        "condition but clear (the ComsAmy split).",
        "",
        *seed_lines,
        markdown(rows),
        "",
        *sweep_lines,
        "",
        *[f"**{r['model']} on {r['dataset']} failed:** {r['error']}" for r in rows if r.get("error")],
        "",
        f"![comparison]({chart.name})",
        "",
        *([f"![per condition]({per_condition.name})", ""] if per_condition is not None else []),
        *robust_lines,
        *study_lines,
    ]
    write_bytes_atomic(out / "compare.md", "\n".join(md).encode())
    return files, study
