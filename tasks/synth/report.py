"""Run report: markdown summary + PNG grids (composites next to their anomaly masks, and the object bank)."""

from __future__ import annotations

import collections
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

from tasks.conditions import condition_order
from tasks.imageio import decode_rgb, write_bytes_atomic, write_rgb
from tasks.object_bank import BankObject
from tasks.sample_format import SAMPLES, SHARDS, decode_parts, read_tar_samples
from tasks.storage import Store


def _fit(img: np.ndarray, width: int) -> np.ndarray:
    h = max(1, round(img.shape[0] * width / img.shape[1]))
    return cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA)


def composite_panel(image: np.ndarray, mask: np.ndarray, boxes: list[list[int]], width: int = 512) -> np.ndarray:
    """Composite with its boxes | the image dimmed with the anomaly mask in red; drawn at ``width`` (the image is
    shrunk first, so a huge composite costs no more memory than a small one)."""
    f = width / image.shape[1]
    small = _fit(image, width)
    size = (small.shape[1], small.shape[0])
    left = small.copy()
    for x0, y0, x1, y1 in boxes:
        p0, p1 = (round(x0 * f), round(y0 * f)), (max(0, round(x1 * f) - 1), max(0, round(y1 * f) - 1))
        cv2.rectangle(left, p0, p1, (255, 220, 0), max(1, width // 512))
    right = cv2.convertScaleAbs(small, alpha=0.35)
    right[cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 0] = (230, 30, 30)
    return np.hstack([left, right])


def composite_grid(shard_dir: str | Path, max_samples: int = 6, width: int = 512) -> np.ndarray | None:
    """The first composites of a shard set (a directory or URL) with their masks and boxes."""
    store = Store(shard_dir)
    shards = store.read_parquet(SHARDS).to_pylist()
    rows = []
    for rec in shards:
        with store.open(rec["shard"]) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            samples, _ = read_tar_samples(tar, rec["shard"])
        for key, parts in samples.items():
            s = decode_parts(key, parts, f"{rec['shard']}:{key}", with_mask=True)
            rows.append(composite_panel(s.image, s.mask, [o["box"] for o in json.loads(s.meta)["objects"]], width))
            if len(rows) >= max_samples:
                break
        if len(rows) >= max_samples:
            break
    if not rows:
        return None
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.vstack([x for r in rows for x in (r, sep)][:-1])


def object_grid(objects: list[BankObject], cell: int = 128, cols: int = 8) -> np.ndarray | None:
    """Bank objects on a checkerboard (so the mask edge is visible), with their class names."""
    if not objects:
        return None
    cols = min(cols, len(objects))
    rows = -(-len(objects) // cols)
    yy, xx = np.mgrid[0:cell, 0:cell]
    checker = np.where(((yy // 16) + (xx // 16)) % 2 == 0, 200, 150).astype(np.uint8)
    out = np.full((rows * (cell + 18), cols * cell, 3), 255, np.uint8)
    for i, o in enumerate(objects):
        r, c = divmod(i, cols)
        rgba = o.rgba
        s = (cell - 4) / max(rgba.shape[:2])
        small = cv2.resize(
            rgba, (max(1, round(rgba.shape[1] * s)), max(1, round(rgba.shape[0] * s))), interpolation=cv2.INTER_AREA
        )
        tile = np.dstack([checker] * 3).copy()
        a = small[..., 3:] / 255.0
        y0, x0 = (cell - small.shape[0]) // 2, (cell - small.shape[1]) // 2
        roi = tile[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]]
        roi[:] = (roi * (1 - a) + small[..., :3] * a).astype(np.uint8)
        oy, ox = r * (cell + 18), c * cell
        out[oy : oy + cell, ox : ox + cell] = tile
        cv2.putText(
            out,
            o.record.class_name[:16],
            (ox + 3, oy + cell + 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return out


REPORT_FILES = ("report.md", "composites.png", "objects.png", "generated.jpg")  # what write_report writes


def write_report(
    run_dir: str | Path,
    shard_dir: str | Path,
    summary: dict,
    bank: list[BankObject],
    rejects: list,
    timings: dict[str, float],
    generation: dict | None = None,
    previews: list[Path] | None = None,
) -> Path:
    """Write ``report.md``, ``composites.png``, ``objects.png`` (and ``generated.jpg``, the generated images
    of this run with their masks and verdicts) under the local ``run_dir``; returns the markdown path. ``shard_dir``,
    whose composites and manifest it shows, may be a URL."""
    run_dir = Path(run_dir)
    gen_lines: list[str] = []
    if generation is not None:
        sheets = [decode_rgb(p.read_bytes(), str(p)) for p in (previews or [])[:4] if p.is_file()]
        if sheets:
            w = min(s.shape[1] for s in sheets)
            write_rgb(
                run_dir / "generated.jpg", np.hstack([s[:, :w] for s in sheets]) if len(sheets) > 1 else sheets[0]
            )
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(generation.get("reasons", {}).items())) or "none"
        gen_lines = [
            "## Generated objects (Stable Diffusion)",
            "",
            f"- this run: {generation['planned']} images generated, {generation['accepted']} accepted, "
            f"{generation['rejected']} rejected ({reasons}); {generation['seconds']:.1f} s, "
            f"{generation.get('images_per_s', 0):.3g} images/s",
            f"- objects in the store: {generation.get('store_objects', 0)}",
            "",
            *(["![generated](generated.jpg)", ""] if sheets else []),
        ]
    grid = composite_grid(shard_dir)
    if grid is not None:
        write_rgb(run_dir / "composites.png", grid)
    og = object_grid(bank)
    if og is not None:
        write_rgb(run_dir / "objects.png", og)
    by_reason = collections.Counter((r.stage, r.reason) for r in rejects)
    by_class = collections.Counter(o.record.class_name for o in bank)
    samples = Store(shard_dir).read_parquet(SAMPLES).to_pylist()
    placed = collections.Counter(c for s in samples for c in s["classes"])
    weather_lines = []
    if (run_dir / "weather.png").is_file():
        by_cond = collections.defaultdict(list)
        for s in samples:
            by_cond[s.get("condition") or "clear"].append(s)
        weather_lines = [
            "## Conditions (visibility: mean ΔE of the objects to their surround)",
            "",
            "| condition | samples | mean severity | mean visibility |",
            "|---|---:|---:|---:|",
            *[
                f"| {c} | {len(v)} | {np.mean([s['severity'] or 0 for s in v]):.2f} | "
                f"{np.mean([x for s in v for x in (s['visibility'] or [])] or [np.nan]):.1f} |"
                for c, v in sorted(by_cond.items(), key=lambda kv: condition_order(kv[0]))
            ],
            "",
            "![weather: one scene in every condition at two severities](weather.png)",
            "",
        ]
    lines = [
        f"# anomalyforge run `{summary['name']}`",
        "",
        f"- shard set: `{shard_dir}` — {summary['samples']} samples in {summary['shards']} shards",
        f"- config hash `{summary['config_hash']}`, seed {summary['seed']}, code {summary['code_version']}",
        f"- object bank: {len(bank)} objects; {summary['rejects']} items quarantined (see `rejects.parquet`)",
        f"- objects placed: {sum(placed.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(placed.items()))})",
        "",
        *gen_lines,
        "## Timings",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in timings.items()],
        "",
        "## Object bank by class",
        "",
        "| class | objects |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in sorted(by_class.items())],
        "",
        "## Quarantined items by reason",
        "",
        "| stage | reason | count |",
        "|---|---|---:|",
        *([f"| {s} | {r} | {n} |" for (s, r), n in sorted(by_reason.items())] or ["| – | none | 0 |"]),
        "",
        *(
            [
                "## Scenes (left: frame; right: its label; line: the horizon the placement uses - yellow camera, "
                "cyan vanishing point, magenta road top, red none found)",
                "",
                "![scenes](scenes.png)",
                "",
            ]
            if (run_dir / "scenes.png").is_file()
            else []
        ),
        "## Composites (left: image with placement boxes; right: anomaly mask, label 254)",
        "",
        "![composites](composites.png)",
        "",
        *weather_lines,
        "## Object bank",
        "",
        "![objects](objects.png)",
        "",
    ]
    path = run_dir / "report.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    return path
