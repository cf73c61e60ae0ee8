"""Unlabeled driving footage as scenes: a folder of frames (recursive globs) or a video sampled at ``fps``,
labelled by a frozen segmenter of the registry (``tasks.synth.scenes.pseudo_labels``).

    scenes: {kind: frames, root: footage/, segmenter: {name: espnetv2, checkpoint: weights/espnetv2.pth}}

Files this source makes, under ``<run_dir>/scenes``:

- ``video/<stem>/<stem>_t<ms>.png``: the frames sampled from a video (once per video, fps and file);
- ``labels/<segmenter>-<sha256 of the checkpoint, 12>-c<threshold>-<size>/<scene id>.png``: the pseudo labels
  (trainIds, void below the confidence threshold), so a rerun with the same checkpoint, threshold and size
  reuses them and never loads the network; ``labels.json`` beside them says what made them.

Frames are labelled (and, with ``size: working``, stored in the shards) at the segmenter's working width with
their aspect ratio kept; ``size: native`` keeps each frame's own size (the logits are resized bilinearly to it).
A frame whose confident drivable area is below ``min_drivable_fraction`` is rejected (``no_drivable_area``), one
that cannot be decoded is rejected (``bad_image``); neither stops the run.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from schemas import PseudoLabelRecord, RejectRecord, ScenesConfig, SynthConfig
from schemas.config import _registered
from tasks.imageio import BadInputError, read_gray, read_rgb, write_bytes_atomic, write_gray, write_rgb
from tasks.labels import train_ids
from tasks.synth.scenes.base import SceneRef
from tasks.synth.scenes.pseudo_labels import LabelRequest, label_batches
from tasks.synth.scenes.registry import register_scene_source
from tasks.synth.shards import sha256_of

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
LABELS_DIR = "labels"


class PseudoLabelSegmenter(BaseModel):
    """The frozen network that labels the frames: a registered segmenter and its checkpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str = "espnetv2"
    checkpoint: Path
    options: dict[str, float | int] = Field(default_factory=dict, description="constructor options, e.g. {s: 2.0}")

    _name = field_validator("name")(lambda v: _registered("segmenter", v))


class FramesSourceConfig(ScenesConfig):
    kind: Literal["frames"] = "frames"
    root: Path = Field(description="a folder of frames (searched with `patterns`) or a video file")
    patterns: list[str] = ["**/*.jpg", "**/*.jpeg", "**/*.png", "**/*.JPG", "**/*.PNG"]
    fps: float = Field(1.0, gt=0, description="video: frames sampled per second")
    size: Literal["working", "native"] = Field(
        "working", description="working: resized to the segmenter's working width (aspect kept); native: as stored"
    )
    width: int | None = Field(None, ge=32, description="the working width; None: the segmenter's native width")
    segmenter: PseudoLabelSegmenter
    threshold: float = Field(0.9, ge=0, le=1, description="softmax confidence below which a pixel is void")
    min_drivable_fraction: float = Field(
        0.03,
        ge=0,
        le=1,
        description="frames with less confident drivable area (placement.drivable_classes) are rejected",
    )
    batch_size: int = Field(4, ge=1)
    device: str = Field("auto", description="auto: cuda when there is one, else cpu")


def list_frames(root: Path, patterns: list[str]) -> list[Path]:
    """Every file under ``root`` matching one of ``patterns``, in a stable order (sorted, no repeats)."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"frames root {root} is neither a folder nor a video file ({', '.join(VIDEO_SUFFIXES)})"
        )
    found = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    if not found:
        raise FileNotFoundError(f"no frames under {root} (patterns {patterns})")
    return found


def sample_video(video: Path, fps: float, out_dir: Path) -> list[Path]:
    """Frames of ``video`` every ``1/fps`` seconds as PNGs under ``out_dir`` (kept for reruns: ``frames.json`` says
    which file, size, modification time and fps made them)."""
    st = video.stat()
    stamp = {"video": str(video.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "fps": fps}
    index = out_dir / "frames.json"
    if index.is_file():
        done = json.loads(index.read_text())
        if {k: done.get(k) for k in stamp} == stamp:
            return [out_dir / f for f in done["frames"]]
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise BadInputError(f"{video}: not a video OpenCV can open")
    native = cap.get(cv2.CAP_PROP_FPS) or 0.0
    if native <= 0:
        cap.release()
        raise BadInputError(f"{video}: the video reports no frame rate")
    step = native / fps  # frames between samples (>= 1 keeps every frame when fps exceeds the native rate)
    frames, i, next_at = [], 0, 0.0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i + 1e-6 >= next_at:
            ms = round(1000 * i / native)
            path = out_dir / f"{video.stem}_t{ms:08d}.png"
            write_rgb(path, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            frames.append(path)
            next_at += max(step, 1.0)
        i += 1
    cap.release()
    if not frames:
        raise BadInputError(f"{video}: no frame could be decoded")
    write_bytes_atomic(index, json.dumps(stamp | {"frames": [p.name for p in frames]}, indent=1).encode())
    return frames


def scene_ids(frames: list[Path], root: Path) -> list[str]:
    """A tar-key-safe id per frame from its path under ``root`` (``a/b c.jpg`` -> ``a__b_c``); the suffix is kept
    where two frames would otherwise share an id."""

    def clean(p: Path, keep_suffix: bool) -> str:
        rel = p.relative_to(root)
        rel = rel if keep_suffix else rel.with_suffix("")
        return re.sub(r"[^A-Za-z0-9_-]", "_", "__".join(rel.parts))

    plain = [clean(p, False) for p in frames]
    seen: dict[str, int] = {}
    for s in plain:
        seen[s] = seen.get(s, 0) + 1
    return [clean(p, True) if seen[s] > 1 else s for p, s in zip(frames, plain, strict=True)]


def working_size(width: int, height: int, target_width: int | None) -> tuple[int, int]:
    """(W, H) of a ``width``×``height`` frame at ``target_width`` with its aspect ratio kept."""
    if target_width is None or target_width == width:
        return width, height
    return target_width, max(1, round(height * target_width / width))


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _format_threshold(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


@register_scene_source("frames", FramesSourceConfig)
def index_frames(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    """Frames with their (cached) pseudo labels; frames without enough confident road are rejected."""
    from models.segmenters import SEGMENTERS

    sc: FramesSourceConfig = cfg.scenes
    scenes_dir = Path(run_dir) / "scenes"
    root = Path(sc.root)
    if root.is_file():
        if root.suffix.lower() not in VIDEO_SUFFIXES:
            raise FileNotFoundError(f"frames root {root} is a file but not a video ({', '.join(VIDEO_SUFFIXES)})")
        frames = sample_video(root, sc.fps, scenes_dir / "video" / root.stem)
        base = frames[0].parent
    else:
        frames, base = list_frames(root, sc.patterns), root
    if sc.limit:
        frames = frames[: sc.limit]
    ids = scene_ids(frames, base)

    ckpt = Path(sc.segmenter.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"scenes.segmenter.checkpoint: {ckpt} not found (the frozen segmenter that labels frames)"
        )
    digest = sha256_of(ckpt)
    net_width = SEGMENTERS[sc.segmenter.name](**sc.segmenter.options).native_size[1] if sc.width is None else sc.width
    size_tag = "native" if sc.size == "native" else f"w{net_width}"
    tag = f"{sc.segmenter.name}-{digest[:12]}-c{_format_threshold(sc.threshold)}-{size_tag}"
    label_dir = scenes_dir / LABELS_DIR / tag
    record = PseudoLabelRecord(
        segmenter=sc.segmenter.name,
        checkpoint=str(ckpt),
        checkpoint_sha256=digest,
        threshold=sc.threshold,
        size=size_tag,
    )
    rejects: list[RejectRecord] = []

    def request(i: int) -> LabelRequest | None:
        try:
            rgb = read_rgb(frames[i])
        except BadInputError as e:
            rejects.append(RejectRecord(stage="scenes", item=str(frames[i]), reason="bad_image", detail=str(e)))
            return None
        h, w = rgb.shape[:2]
        work = working_size(w, h, net_width)
        x = cv2.resize(rgb, work, interpolation=cv2.INTER_AREA) if work != (w, h) else rgb
        return LabelRequest(ids[i], x, (w, h) if sc.size == "native" else work)

    todo = [i for i in range(len(frames)) if not (label_dir / f"{ids[i]}.png").is_file()]
    if todo:
        from tasks.train.checkpoints import frozen_segmenter

        device = _device(sc.device)
        log.info("pseudo-labelling %d of %d frames with %s on %s", len(todo), len(frames), tag, device)
        bar = tqdm(total=len(todo), desc="pseudo labels", unit="frame")

        def save(r: LabelRequest, label: np.ndarray) -> None:
            write_gray(label_dir / f"{r.key}.png", label)
            bar.update(1)

        requests = (r for i in todo if (r := request(i)) is not None)
        # strict load, weights_only; only once a frame decodes
        label_batches(lambda: frozen_segmenter(sc.segmenter), requests, sc.threshold, sc.batch_size, device, save)
        bar.close()
        write_bytes_atomic(label_dir / "labels.json", record.model_dump_json(indent=1).encode())

    bad = {r.item for r in rejects}
    drivable = train_ids(cfg.placement.drivable_classes)
    refs: list[SceneRef] = []
    for frame, sid in zip(frames, ids, strict=True):
        if str(frame) in bad:
            continue
        label_path = label_dir / f"{sid}.png"
        label = read_gray(label_path)
        share = float(np.isin(label, drivable).mean())
        if share < sc.min_drivable_fraction:
            rejects.append(
                RejectRecord(
                    stage="scenes",
                    item=str(frame),
                    reason="no_drivable_area",
                    detail=f"{share:.1%} of the frame is confident {'/'.join(cfg.placement.drivable_classes)} "
                    f"(min_drivable_fraction {sc.min_drivable_fraction:.1%}, threshold {sc.threshold})",
                )
            )
            continue
        h, w = label.shape
        refs.append(
            SceneRef(
                scene_id=sid,
                image=frame,
                label=label_path,
                label_kind="labelTrainIds",
                size=None if sc.size == "native" else (w, h),
                pseudo_label=record,
            )
        )
    return refs, rejects
