"""Unlabeled driving footage as scenes: a folder of frames (recursive globs) or a video sampled at ``fps``,
labelled by a frozen segmenter of the registry (``tasks.scenes.pseudo_labels``).

    scenes: {kind: frames, root: footage/, segmenter: {name: espnetv2, checkpoint: weights/espnetv2.pth}}

Files this source makes, under ``<run_dir>/scenes``:

- ``video/<stem>/<stem>_t<ms>.png``: the frames sampled from a video (once per video, fps and file);
- ``labels/<segmenter>-<sha256 of the checkpoint, 12>-c<threshold>-w<working width>[-native]/<scene id>.png``: the
  pseudo labels (trainIds, void below the confidence threshold), so a rerun with the same checkpoint, threshold
  and size reuses them and never loads the network; ``labels.json`` beside them says what made them, and
  ``index.json`` which frame (path, bytes, modification time) each was made from: a changed frame is labelled
  again.

Frames are labelled (and, with ``size: working``, stored in the shards) at the segmenter's working width with
their aspect ratio kept; ``size: native`` keeps each frame's own size (the logits are resized bilinearly to it).
A frame whose confident drivable area is below ``min_drivable_fraction`` is rejected (``no_drivable_area``), one
that cannot be decoded is rejected (``bad_image``); neither stops the run.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from models.segmenters import build_segmenter
from schemas import PseudoLabelRecord, RejectRecord, ScenesConfig, SynthConfig
from schemas.registries import SCENE_SOURCES, SEGMENTERS
from tasks.checkpoints import frozen_segmenter
from tasks.imageio import BadInputError, read_gray, read_rgb, write_bytes_atomic, write_gray, write_rgb
from tasks.labels import train_ids
from tasks.layout import RunLayout
from tasks.scenes.base import SceneRef
from tasks.scenes.pseudo_labels import LabelRequest, label_batches
from tasks.shards import sha256_of

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
LABELS_DIR = "labels"


class PseudoLabelSegmenter(BaseModel):
    """The frozen network that labels the frames: a registered segmenter and its checkpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str = "espnetv2"
    checkpoint: Path
    options: dict[str, float | int] = Field(default_factory=dict, description="constructor options, e.g. {s: 2.0}")

    _name = field_validator("name")(lambda v: SEGMENTERS.check_name(v))


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

    def hash_payload(self) -> dict:
        return self.model_dump(mode="json", exclude={"batch_size", "device"})  # how the labels are made, not what


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
    period = 1000.0 / fps  # ms between samples
    frames, i, next_at = [], 0, 0.0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        # the decoder's timestamp of the frame (a container's frame rate can be bogus); the rate when it has none
        ms = cap.get(cv2.CAP_PROP_POS_MSEC) if i else 0.0
        if i and ms <= 0:
            if native <= 0:
                cap.release()
                raise BadInputError(f"{video}: the video has neither frame timestamps nor a frame rate")
            ms = 1000.0 * i / native
        if ms + 1e-3 >= next_at:
            path = out_dir / f"{video.stem}_t{round(ms):08d}.png"
            write_rgb(path, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            frames.append(path)
            while next_at <= ms + 1e-3:
                next_at += period
        i += 1
    cap.release()
    if not frames:
        raise BadInputError(f"{video}: no frame could be decoded")
    write_bytes_atomic(index, json.dumps(stamp | {"frames": [p.name for p in frames]}, indent=1).encode())
    return frames


def scene_ids(frames: list[Path], root: Path) -> list[str]:
    """A tar-key-safe id per frame from its path under ``root`` (``a/b c.jpg`` -> ``a__b_c``). Paths that would
    share an id (``x.jpg`` and ``x.png``, ``a b.jpg`` and ``a_b.jpg``) get 8 hex digits of their path's sha256."""
    rel = [p.relative_to(root) for p in frames]
    plain = [re.sub(r"[^A-Za-z0-9_-]", "_", "__".join(r.with_suffix("").parts)) for r in rel]
    count = collections.Counter(plain)
    return [
        f"{s}_{hashlib.sha256(r.as_posix().encode()).hexdigest()[:8]}" if count[s] > 1 else s
        for r, s in zip(rel, plain, strict=True)
    ]


def working_size(width: int, height: int, target_width: int | None) -> tuple[int, int]:
    """(W, H) of a ``width``×``height`` frame at ``target_width`` with its aspect ratio kept."""
    if target_width is None or target_width == width:
        return width, height
    return target_width, max(1, round(height * target_width / width))


def _device(name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _format_threshold(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


class LabelCache:
    """Pseudo labels of one (segmenter checkpoint, threshold, size) under ``folder``: ``<scene id>.png`` and
    ``index.json``, which records the frame each label was made from (path, bytes, modification time); a label is
    reused only while its frame is unchanged."""

    def __init__(self, folder: Path, record: PseudoLabelRecord):
        self.folder, self.record = folder, record
        index = folder / "index.json"
        self.stamps: dict[str, list] = json.loads(index.read_text()) if index.is_file() else {}

    @staticmethod
    def stamp(frame: Path) -> list:
        st = frame.stat()
        return [str(frame.resolve()), st.st_size, st.st_mtime_ns]

    def path(self, sid: str) -> Path:
        return self.folder / f"{sid}.png"

    def has(self, sid: str, frame: Path) -> bool:
        return self.path(sid).is_file() and self.stamps.get(sid) == self.stamp(frame)

    def put(self, sid: str, frame: Path, label: np.ndarray) -> None:
        write_gray(self.path(sid), label)
        self.stamps[sid] = self.stamp(frame)

    def drop(self, sid: str) -> None:
        self.path(sid).unlink(missing_ok=True)
        self.stamps.pop(sid, None)

    def save(self) -> None:
        write_bytes_atomic(self.folder / "labels.json", self.record.model_dump_json(indent=1).encode())
        write_bytes_atomic(self.folder / "index.json", json.dumps(self.stamps, indent=0, sort_keys=True).encode())


@SCENE_SOURCES.register("frames", config=FramesSourceConfig)
def index_frames(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    """Frames with their (cached) pseudo labels, in path order; frames without enough confident road are rejected.
    With ``limit``, frames are labelled a limit's worth at a time until that many scenes are accepted."""

    sc: FramesSourceConfig = cfg.scenes
    scenes_dir = RunLayout.of(run_dir).scenes
    root = Path(sc.root)
    if root.is_file():
        if root.suffix.lower() not in VIDEO_SUFFIXES:
            raise FileNotFoundError(f"frames root {root} is a file but not a video ({', '.join(VIDEO_SUFFIXES)})")
        frames = sample_video(root, sc.fps, scenes_dir / "video" / root.stem)
        base = frames[0].parent
    else:
        frames, base = list_frames(root, sc.patterns), root
    ids = scene_ids(frames, base)

    ckpt = Path(sc.segmenter.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"scenes.segmenter.checkpoint: {ckpt} not found (the frozen segmenter that labels frames)"
        )
    digest = sha256_of(ckpt)
    net_width = (
        build_segmenter(sc.segmenter.name, **sc.segmenter.options).native_size[1] if sc.width is None else sc.width
    )
    size_tag = f"w{net_width}" + ("-native" if sc.size == "native" else "")
    record = PseudoLabelRecord(
        segmenter=sc.segmenter.name,
        checkpoint=str(ckpt),
        checkpoint_sha256=digest,
        threshold=sc.threshold,
        size=size_tag,
    )
    tag = f"{sc.segmenter.name}-{digest[:12]}-c{_format_threshold(sc.threshold)}-{size_tag}"
    cache = LabelCache(scenes_dir / LABELS_DIR / tag, record)
    device = _device(sc.device)
    rejects: list[RejectRecord] = []
    bad: set[int] = set()

    def request(i: int) -> LabelRequest | None:
        try:
            rgb = read_rgb(frames[i])
        except BadInputError as e:
            rejects.append(RejectRecord(stage="scenes", item=str(frames[i]), reason="bad_image", detail=str(e)))
            bad.add(i)
            return None
        h, w = rgb.shape[:2]
        work = working_size(w, h, net_width)
        x = cv2.resize(rgb, work, interpolation=cv2.INTER_AREA) if work != (w, h) else rgb
        return LabelRequest(str(i), x, (w, h) if sc.size == "native" else work)

    def label_missing(part: list[int]) -> None:
        todo = [i for i in part if not cache.has(ids[i], frames[i])]
        if not todo:
            return
        log.info("pseudo-labelling %d of %d frames with %s on %s", len(todo), len(frames), tag, device)
        with tqdm(total=len(todo), desc="pseudo labels", unit="frame") as bar:

            def save(r: LabelRequest, label: np.ndarray) -> None:
                i = int(r.key)
                cache.put(ids[i], frames[i], label)
                bar.update(1)

            requests = (r for i in todo if (r := request(i)) is not None)
            # strict, weights_only load; only once a frame decodes
            label_batches(lambda: frozen_segmenter(sc.segmenter), requests, sc.threshold, sc.batch_size, device, save)
        cache.save()

    drivable = train_ids(cfg.placement.drivable_classes)
    refs: list[SceneRef] = []
    chunk = sc.limit or len(frames)
    for start in range(0, len(frames), chunk):
        part = list(range(start, min(start + chunk, len(frames))))
        label_missing(part)
        for i in part:
            if i in bad:
                continue
            frame, sid = frames[i], ids[i]
            try:
                label = read_gray(cache.path(sid))
            except BadInputError as e:  # a damaged cache file: made again by the next run
                cache.drop(sid)
                cache.save()
                rejects.append(RejectRecord(stage="scenes", item=str(frame), reason="bad_pseudo_label", detail=str(e)))
                continue
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
                    label=cache.path(sid),
                    label_kind="labelTrainIds",
                    size=None if sc.size == "native" else (w, h),
                    pseudo_label=record,
                )
            )
            if sc.limit and len(refs) >= sc.limit:
                return refs, rejects
    return refs, rejects
