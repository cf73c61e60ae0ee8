"""A real benchmark under every condition: ``anomalyforge weather-benchmark`` (ComsAmy's question asked of the
benchmarks one has).

Every image of a benchmark the readers know (any ``BENCHMARKS`` layout but shards) is rendered in every condition
of the chosen families (``tasks.weather``: physically modelled weather, severity in [0, 1];
``tasks.corruptions``: ImageNet-C, levels 1-5) at each chosen severity, and written with its untouched evaluation
label as a new benchmark in the ``folder`` layout:

    <out>/manifest.csv              image,label,condition,severity + source, layout and drawn parameters per row
    <out>/images/<id>__<condition>_s<severity>.png   (and <id>__clear.png, the clear copy)
    <out>/labels/<id>.png           the source's evaluation label (0 inlier, 1 anomaly, 255 void), once per image
    <out>/sheet_<family>.png        one image in every condition and severity of a family
    <out>/weathered.json            the config, its hash, counts and timings

``eval`` and ``compare`` read it as ``{kind: folder, root: <out>}`` and report every metric per condition and per
condition and severity (``fog@0.67``), with nothing of their own for it.

The weather effects need the scene's layout, which real benchmark images do not carry: the frozen segmenter's
pseudo labels (``tasks.scenes.pseudo_labels``, as the frames scene source makes them) give ground, sky and
wet surfaces, and the horizon is the vanishing point of the drivable area's boundaries (``tasks.horizon``, as for
synthesis). An image in which the segmenter finds no drivable ground still renders: the horizon is put at
mid-height, every pixel below it stands on its own row and everything above is far (the row-only depth of
``tasks.weather.depth_table``); the manifest's ``layout`` column says ``no_ground`` for it.

Deterministic: each rendering draws from ``derive_seed(seed, image id, condition, severity)``; PNG encoding is
lossless and stable, so the same benchmark, config and seed give byte-identical files. Files are written
atomically; a stopped run keeps what it finished, and the same command resumes (an ``out`` made with another
config is refused). The manifest is written last, so a reader never takes a partial benchmark for whole.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from models.segmenters import build_segmenter
from schemas import WeatheredBenchmarkConfig
from tasks.checkpoints import frozen_segmenter
from tasks.conditions import CLEAR, condition_tag
from tasks.eval.benchmarks import EvalDataset, load_benchmark
from tasks.horizon import estimate_horizon
from tasks.imageio import BadInputError, encode_rgb, write_bytes_atomic, write_gray
from tasks.runtime import check_stop
from tasks.scenes.frames import working_size
from tasks.scenes.pseudo_labels import LabelRequest, label_batches
from tasks.seeding import derive_seed
from tasks.weather import Frame, class_mask, contact_sheet, render

MANIFEST = "manifest.csv"
STATE = "weathered.json"
DONE = ".done"  # one JSON of manifest rows per finished source image: what a resumed run skips
COLUMNS = (
    "image",
    "label",
    "condition",
    "severity",
    "source",
    "layout",
    "horizon",
    "horizon_source",
    "ground_fraction",
    "params",
)


class WeatheredBenchmarkError(ValueError):
    """An output folder that cannot be (re)used for this config."""


@dataclass
class SceneLayout:
    """What the weather effects know of a benchmark image: its pseudo labels and flat-ground camera."""

    frame: Frame
    horizon_source: str  # vanishing_point | road | default
    ground_fraction: float

    @property
    def name(self) -> str:
        return "ground" if self.ground_fraction > 0 else "no_ground"


def scene_layout(pseudo: np.ndarray, cfg: WeatheredBenchmarkConfig) -> SceneLayout:
    """The weather frame of an image from its pseudo labels (trainIds, void where unsure)."""
    h, w = pseudo.shape
    horizon = estimate_horizon(pseudo, cfg.drivable_classes)
    ground = float(class_mask(pseudo, ("road", "sidewalk", "terrain")).mean())
    frame = Frame(pseudo, horizon.row, cfg.camera_height_m, cfg.focal_px_per_width * w, cfg.max_depth_m)
    return SceneLayout(frame, horizon.source, round(ground, 4))


def _severity_text(s: float | int) -> str:
    return f"{s:g}"


def _image_name(item_id: str, condition: str, severity, ext: str) -> str:
    return (
        f"{item_id}__{CLEAR}.{ext}"
        if condition == CLEAR
        else f"{item_id}__{condition}_s{_severity_text(severity)}.{ext}"
    )


def _state(cfg: WeatheredBenchmarkConfig) -> dict:
    return {"config": cfg.model_dump(mode="json"), "config_hash": cfg.content_hash()}


def _claim(out: Path, cfg: WeatheredBenchmarkConfig) -> None:
    """Make ``out`` this config's, or check it is already (resume); anything else there is refused."""
    state = out / STATE
    if state.is_file():
        try:
            old = json.loads(state.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WeatheredBenchmarkError(f"{state}: unreadable ({e}); delete {out} to start over") from None
        if old.get("config_hash") != cfg.content_hash():
            raise WeatheredBenchmarkError(
                f"{out} holds a weathered benchmark made with another config; choose another out or delete it"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise WeatheredBenchmarkError(f"{out} exists and is not a weathered benchmark; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    (out / DONE).mkdir(exist_ok=True)
    write_bytes_atomic(state, json.dumps(_state(cfg), indent=1).encode())


def weather_benchmark(cfg: WeatheredBenchmarkConfig, progress: bool = True) -> dict:
    """Write the weathered copy of ``cfg.source`` to ``cfg.out`` (module docstring); returns a summary: paths,
    counts per condition, the seconds spent labelling, rendering and writing."""
    src = cfg.source
    ds = load_benchmark(src.kind, src.root, src.name, src.split)
    if not isinstance(ds, EvalDataset):
        raise WeatheredBenchmarkError(f"{src.kind}: not a benchmark of image files")
    items = ds.items[: src.limit] if src.limit else ds.items
    out = Path(cfg.out)
    _claim(out, cfg)
    ext = cfg.image_format
    plan = cfg.rendered()
    net_width = (
        build_segmenter(cfg.segmenter.name, **cfg.segmenter.options).native_size[1] if cfg.width is None else cfg.width
    )
    sheets: dict[str, dict] = {}
    timing = {"label_s": 0.0, "render_s": 0.0, "write_s": 0.0}
    started = time.perf_counter()
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    quarantined: list[dict] = []

    done: dict[int, list[dict]] = {}
    for k, item in enumerate(items):  # finished by an earlier run of this config
        if (f := out / DONE / f"{item.item_id}.json").is_file():
            done[k] = json.loads(f.read_text())
    sheet_k = min(cfg.sheet_image, len(items) - 1)
    done.pop(sheet_k, None)  # the contact sheet's image is rendered again (same bytes: it is deterministic)

    def requests():
        for k, item in enumerate(items):
            if k in done:
                bar.update(1)
                continue
            check_stop(f"weathering {ds.name} after {k} of {len(items)} images (run the same command to resume)")
            try:
                image, label = ds.load(item)
            except BadInputError as e:  # one bad image never stops the benchmark: it is listed instead
                quarantined.append({"image": str(item.image), "reason": str(e)})
                bar.update(1)
                continue
            loaded[str(k)] = (image, label)
            h, w = image.shape[:2]
            work = working_size(w, h, net_width)
            x = cv2.resize(image, work, interpolation=cv2.INTER_AREA) if work != (w, h) else image
            yield LabelRequest(str(k), x, (w, h))

    bar = tqdm(total=len(items), desc=f"weathering {ds.name}", unit="img", disable=not progress)
    t_label = [time.perf_counter()]

    def on_label(req: LabelRequest, pseudo: np.ndarray) -> None:
        k = int(req.key)
        item = items[k]
        image, label = loaded.pop(req.key)
        timing["label_s"] += time.perf_counter() - t_label[0]
        layout = scene_layout(pseudo, cfg)
        label_rel = f"labels/{item.item_id}.png"
        t = time.perf_counter()
        if not (out / label_rel).is_file():
            write_gray(out / label_rel, label)
        base = {
            "label": label_rel,
            "source": str(item.image),
            "layout": layout.name,
            "horizon": round(layout.frame.horizon, 2),
            "horizon_source": layout.horizon_source,
            "ground_fraction": layout.ground_fraction,
        }
        clear_rel = f"images/{_image_name(item.item_id, CLEAR, 0, ext)}"
        if not (out / clear_rel).is_file():
            write_bytes_atomic(out / clear_rel, encode_rgb(image, ext, cfg.jpeg_quality))
        timing["write_s"] += time.perf_counter() - t
        mine = [base | {"image": clear_rel, "condition": CLEAR, "severity": "", "params": "{}"}]
        show = k == sheet_k
        try:
            mine += render_all(item.item_id, image, layout, base, show)
        except ValueError as e:  # an image an effect cannot take (e.g. under ImageNet-C's 32 px): listed, skipped
            quarantined.append({"image": str(item.image), "reason": str(e)})
            bar.update(1)
            return
        write_bytes_atomic(out / DONE / f"{item.item_id}.json", json.dumps(mine).encode())
        done[k] = mine
        bar.update(1)
        t_label[0] = time.perf_counter()

    def render_all(item_id: str, image: np.ndarray, layout: SceneLayout, base: dict, show: bool) -> list[dict]:
        """Every condition and severity of one image: written, and its manifest rows returned."""
        mine = []
        for cond, fam, severities in plan:
            if show:
                sheets.setdefault(fam, {})[(CLEAR, severities[0])] = image
            for sev in severities:
                rel = f"images/{_image_name(item_id, cond, sev, ext)}"
                rng = np.random.default_rng(
                    derive_seed(cfg.seed, "weathered-benchmark", item_id, cond, _severity_text(sev))
                )
                t = time.perf_counter()
                weathered, params = render(cond, image, layout.frame, sev, rng, cfg.options.get(cond))
                timing["render_s"] += time.perf_counter() - t
                t = time.perf_counter()
                if not (out / rel).is_file():
                    write_bytes_atomic(out / rel, encode_rgb(weathered, ext, cfg.jpeg_quality))
                timing["write_s"] += time.perf_counter() - t
                mine.append(
                    base
                    | {
                        "image": rel,
                        "condition": cond,
                        "severity": _severity_text(sev),
                        "params": json.dumps(params, sort_keys=True),
                    }
                )
                if show:
                    sheets[fam][(cond, sev)] = weathered
        return mine

    try:
        label_batches(lambda: frozen_segmenter(cfg.segmenter), requests(), cfg.threshold, 1, cfg.device, on_label)
    finally:
        bar.close()
    rows = [r for k in sorted(done) for r in done[k]]
    sheet_paths = {}
    for fam, tiles in sheets.items():
        path = out / f"sheet_{fam}.png"
        write_bytes_atomic(path, encode_rgb(contact_sheet(_sheet_order(tiles)), "png"))
        sheet_paths[fam] = str(path)
    manifest = out / MANIFEST
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(manifest, buf.getvalue().encode())
    counts: dict[str, int] = {}
    for r in rows:
        tag = r["condition"] if not r["severity"] else condition_tag(r["condition"], r["severity"])
        counts[tag] = counts.get(tag, 0) + 1
    summary = _state(cfg) | {
        "source_images": len(items),
        "images": len(rows),
        "no_ground": sorted({Path(r["label"]).stem for r in rows if r["layout"] == "no_ground"}),
        "quarantined": quarantined,
        "counts": counts,
        "seconds": {k: round(v, 1) for k, v in timing.items()} | {"total_s": round(time.perf_counter() - started, 1)},
        "manifest": str(manifest),
        "sheets": sheet_paths,
    }
    write_bytes_atomic(out / STATE, json.dumps(summary, indent=1).encode())
    return summary


def _sheet_order(tiles: dict) -> dict:
    """Clear first, then the conditions as rendered (``contact_sheet`` lays out columns in insertion order)."""
    clear = {k: v for k, v in tiles.items() if k[0] == CLEAR}
    return clear | {k: v for k, v in tiles.items() if k[0] != CLEAR}
