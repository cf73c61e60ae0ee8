"""Scene sources beyond Cityscapes: unlabeled frames with pseudo labels, ACDC, BDD100K, Mapillary Vistas, and the
vanishing-point horizon."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from schemas import SynthConfig
from schemas.registries import SCENE_SOURCES
from tasks.horizon import Horizon, estimate_horizon, vanishing_point_row
from tasks.labels import VOID, train_id
from tasks.scenes import index_scenes, load_scene
from tasks.scenes.frames import sample_video, scene_ids, working_size
from tasks.scenes.pseudo_labels import confident_labels
from tests.helpers import shared_or_skip

ESPNET = ("espnetv2", "espnetv2_s_2.0_city_1024x512.pth")
ROAD, SKY, CAR, BUILDING = train_id("road"), train_id("sky"), train_id("car"), train_id("building")


def test_every_source_is_registered_with_its_own_config():
    assert set(SCENE_SOURCES) >= {"cityscapes", "demo", "frames", "acdc", "bdd100k", "mapillary"}
    for name in SCENE_SOURCES.names():
        assert SCENE_SOURCES.config(name).model_fields["kind"].default == name


# ------------------------------------------------------------------ confidence gate (hand values)


def test_confidence_gate_keeps_confident_pixels_and_voids_the_rest():
    logits = torch.zeros(1, 19, 1, 2)
    logits[0, 3, 0, 0] = 10.0  # p = e^10 / (e^10 + 18) = 0.99918
    logits[0, 5, 0, 1] = 1.0  # p = e / (e + 18) = 0.13120
    label, conf = confident_labels(logits, None, threshold=0.9)
    assert label.tolist() == [[3, VOID]]
    assert conf[0, 0] == pytest.approx(math.exp(10) / (math.exp(10) + 18), rel=1e-6)
    assert conf[0, 1] == pytest.approx(math.e / (math.e + 18), rel=1e-6)
    assert confident_labels(logits, None, threshold=0.13)[0].tolist() == [[3, 5]]
    # resized to (W, H) = (4, 3) before the softmax: every pixel gets a label from the interpolated logits
    big, _ = confident_labels(logits, (4, 3), threshold=0.0)
    assert big.shape == (3, 4) and set(np.unique(big)) == {3, 5}
    assert big[:, 0].tolist() == [3, 3, 3] and big[:, -1].tolist() == [5, 5, 5]  # each side keeps its own class


def test_working_size_keeps_the_aspect_ratio():
    assert working_size(1280, 720, 1024) == (1024, 576)
    assert working_size(1242, 375, 1024) == (1024, 309)
    assert working_size(640, 480, None) == (640, 480)


def test_scene_ids_are_tar_safe_and_unique(tmp_path):
    assert scene_ids([tmp_path / "a b" / "x.jpg", tmp_path / "c" / "y.png"], tmp_path) == ["a_b__x", "c__y"]
    clashes = [
        ["y.png", "y.jpg"],
        ["a b.jpg", "a_b.jpg"],
        ["b.jpg", "b.png", "b_jpg.png"],
        ["a/b__c.jpg", "a__b/c.jpg"],
    ]
    for names in clashes:
        ids = scene_ids([tmp_path / n for n in names], tmp_path)
        assert len(set(ids)) == len(ids), (names, ids)
        assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    assert scene_ids([tmp_path / n for n in ["y.png", "y.jpg"]], tmp_path) == scene_ids(
        [tmp_path / n for n in ["y.png", "y.jpg"]], tmp_path
    )


# ------------------------------------------------------------------ vanishing point


def _road_with_sides(H=400, W=600, vp=(310.0, 120.0), cut=170, left_slope=-1.6, right_slope=1.3):
    """trainIds: sky above the horizon, buildings below it, a road whose straight sides meet at ``vp`` (x, y) and
    that is hidden above row ``cut`` (a truck ahead)."""
    label = np.full((H, W), BUILDING, np.uint8)
    label[: int(vp[1])] = SKY
    ys = np.arange(H)[:, None].astype(float)
    xs = np.arange(W)[None, :].astype(float)
    left = vp[0] + left_slope * (ys - vp[1])  # x of the left side at row y (x = a·y + b)
    right = vp[0] + right_slope * (ys - vp[1])
    road = (xs >= left) & (xs <= right) & (ys >= cut)
    label[road] = ROAD
    return label


def test_vanishing_point_of_straight_road_sides_is_the_horizon():
    label = _road_with_sides()
    h = estimate_horizon(label, ["road"], stride=4)
    assert h.source == "vanishing_point"
    assert h.row == pytest.approx(120.0, abs=4.0)  # one grid cell of the stride-4 search
    # the road's top row is where the truck hides it, 50 px below the horizon: what the road-top estimate says
    road_rows = np.flatnonzero((label == ROAD).any(axis=1))
    assert road_rows[0] == 170
    # hidden from 30 % of the frame below the horizon on, the sides are not trusted to meet at it
    far = estimate_horizon(_road_with_sides(cut=240), ["road"], stride=4)
    assert far.source == "road" and far.row == 240


def test_vanishing_point_with_the_road_leaving_the_frame_at_the_bottom():
    # steep sides that leave through the bottom corners: those rows touch the border and are no boundary
    label = _road_with_sides(vp=(300.0, 150.0), cut=150, left_slope=-2.5, right_slope=2.5)
    assert (label[-1] == ROAD).all()
    vp = vanishing_point_row(label[::2, ::2] == ROAD)
    assert vp is not None and vp * 2 == pytest.approx(150.0, abs=3.0)


def test_no_vanishing_point_for_a_curved_or_sideways_road_falls_back_to_the_road_top():
    H, W = 300, 400
    label = np.full((H, W), BUILDING, np.uint8)
    ys = np.arange(H)[:, None].astype(float)
    xs = np.arange(W)[None, :].astype(float)
    centre = 200 + 0.004 * (ys - 300) ** 2  # a bend to the right
    half = 0.6 * (ys - 100)
    label[(np.abs(xs - centre) <= half) & (ys >= 110)] = ROAD
    h = estimate_horizon(label, ["road"], stride=2)
    assert h.source == "road" and h.row == 110
    sideways = np.full((H, W), BUILDING, np.uint8)
    sideways[150:, :] = ROAD  # a road across the frame, both sides on the border: no boundary points
    assert estimate_horizon(sideways, ["road"], stride=2) == Horizon(row=150.0, source="road")
    parallel = np.full((H, W), BUILDING, np.uint8)
    parallel[100:, 150:250] = ROAD  # straight sides that never meet
    assert vanishing_point_row(parallel == ROAD) is None


# ------------------------------------------------------------------ unlabeled frames: offline, tiny segmenter


def _tiny_checkpoint(path: Path, road_bias: float | None = None) -> Path:
    """A random espnetv2_demo state dict; with ``road_bias`` the output layer says "road" with confidence
    everywhere (so labels are predictable without real weights)."""
    from models.segmenters import build_segmenter

    torch.manual_seed(0)
    seg = build_segmenter("espnetv2_demo")
    sd = seg.net.state_dict()
    if road_bias is not None:
        last = [k for k in sd if k.endswith("bias") and sd[k].shape == (20,)][-1]
        sd[last][:] = 0
        sd[last][ROAD] = road_bias
        sd[last.replace("bias", "weight")].zero_()
    torch.save(sd, path)
    return path


def _frames_config(root: Path, ckpt: Path, **scenes) -> SynthConfig:
    return SynthConfig.model_validate(
        {
            "scenes": {
                "kind": "frames",
                "root": str(root),
                "segmenter": {"name": "espnetv2_demo", "checkpoint": str(ckpt)},
                "width": 128,
                **scenes,
            }
        }
    )


def _write_frames(folder: Path, n: int, size=(160, 90)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = folder / ("sub" if i % 2 else "") / f"frame{i}.{'png' if i % 2 else 'jpg'}"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        out.append(p)
    return out


def test_frames_get_cached_pseudo_labels_and_are_resized_to_the_working_width(tmp_path, monkeypatch):
    _write_frames(tmp_path / "footage", 3)
    (tmp_path / "footage" / "broken.jpg").write_bytes(b"not a jpeg")
    ckpt = _tiny_checkpoint(tmp_path / "road.pth", road_bias=8.0)
    cfg = _frames_config(tmp_path / "footage", ckpt)
    refs, rejects = index_scenes(cfg, tmp_path / "run")
    assert [r.reason for r in rejects] == ["bad_image"] and "broken.jpg" in rejects[0].item
    assert sorted(r.scene_id for r in refs) == ["frame0", "frame2", "sub__frame1"]
    scene = load_scene(refs[0])
    assert scene.image.shape == (72, 128, 3)  # 160x90 at width 128, aspect kept
    assert (scene.label == ROAD).all()  # p(road) = e^8 / (e^8 + 18) = 0.994 >= 0.9
    rec = scene.pseudo_label
    assert rec.segmenter == "espnetv2_demo" and rec.threshold == 0.9 and rec.size == "w128"
    assert refs[0].size == (128, 72) and load_scene(refs[0]).label.shape == (72, 128)
    import hashlib

    assert rec.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cache = tmp_path / "run" / "scenes" / "labels" / f"espnetv2_demo-{rec.checkpoint_sha256[:12]}-c0.9-w128"
    assert json.loads((cache / "labels.json").read_text())["checkpoint_sha256"] == rec.checkpoint_sha256
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.png")}
    assert len(mtimes) == 3

    # a rerun reuses the cache: the network is not even loaded
    def no_network(*a, **k):
        raise AssertionError("the segmenter was loaded although every label is cached")

    with monkeypatch.context() as m:
        m.setattr("tasks.checkpoints.frozen_segmenter", no_network)
        again, _ = index_scenes(cfg, tmp_path / "run")
    assert again == refs
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.png")} == mtimes

    # a replaced frame (another size) is labelled again; the others keep their labels
    cv2.imwrite(str(tmp_path / "footage" / "frame0.jpg"), np.zeros((50, 200, 3), np.uint8))
    again, _ = index_scenes(cfg, tmp_path / "run")
    assert load_scene(next(r for r in again if r.scene_id == "frame0")).label.shape == (32, 128)
    now = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.png")}
    assert now["frame0.png"] != mtimes["frame0.png"] and now["frame2.png"] == mtimes["frame2.png"]
    # a damaged cache file rejects its frame and is made again by the next run
    cache.joinpath("frame2.png").write_bytes(b"broken")
    _, rejects = index_scenes(cfg, tmp_path / "run")
    assert sorted(r.reason for r in rejects) == ["bad_image", "bad_pseudo_label"]
    refs, rejects = index_scenes(cfg, tmp_path / "run")
    assert len(refs) == 3 and [r.reason for r in rejects] == ["bad_image"]


def test_limit_counts_accepted_scenes_and_labels_no_more_frames_than_it_takes(tmp_path):
    _write_frames(tmp_path / "footage", 6)
    for name in ("frame0.jpg", "frame2.jpg"):
        (tmp_path / "footage" / name).write_bytes(b"broken")  # frames 0 and 2 cannot be read
    ckpt = _tiny_checkpoint(tmp_path / "road.pth", road_bias=8.0)
    refs, rejects = index_scenes(_frames_config(tmp_path / "footage", ckpt, limit=2), tmp_path / "run")
    # path order: frame0, frame2, frame4, sub/frame1, sub/frame3, sub/frame5 -> chunks of 2: two bad, then two good
    assert [r.scene_id for r in refs] == ["frame4", "sub__frame1"] and len(rejects) == 2
    labels = next((tmp_path / "run" / "scenes" / "labels").iterdir())
    assert sorted(p.stem for p in labels.glob("*.png")) == ["frame4", "sub__frame1"]  # frames 3 and 5 untouched


def test_frames_below_the_confidence_gate_are_rejected_for_no_drivable_area(tmp_path):
    _write_frames(tmp_path / "footage", 2)
    ckpt = _tiny_checkpoint(tmp_path / "weak.pth", road_bias=4.0)  # p(road) = e^4 / (e^4 + 18) = 0.752
    refs, rejects = index_scenes(_frames_config(tmp_path / "footage", ckpt, threshold=0.9), tmp_path / "run")
    assert refs == [] and [r.reason for r in rejects] == ["no_drivable_area"] * 2
    assert "0.0% of the frame is confident road" in rejects[0].detail
    refs, rejects = index_scenes(_frames_config(tmp_path / "footage", ckpt, threshold=0.7), tmp_path / "run")
    assert len(refs) == 2 and not rejects  # another threshold: another cache, every pixel is road
    assert len(list((tmp_path / "run" / "scenes" / "labels").iterdir())) == 2


def test_native_size_keeps_each_frame_as_it_is(tmp_path):
    _write_frames(tmp_path / "footage", 1, size=(200, 100))
    ckpt = _tiny_checkpoint(tmp_path / "road.pth", road_bias=8.0)
    refs, _ = index_scenes(_frames_config(tmp_path / "footage", ckpt, size="native"), tmp_path / "run")
    scene = load_scene(refs[0])
    assert refs[0].size is None and scene.image.shape == (100, 200, 3) and scene.label.shape == (100, 200)
    assert scene.pseudo_label.size == "w128-native"  # labelled at width 128, logits resized to the frame


def test_a_video_is_sampled_at_the_given_fps(tmp_path):
    video = tmp_path / "drive.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 32))
    for i in range(25):  # 2.5 s at 10 fps
        w.write(np.full((32, 64, 3), 10 * i, np.uint8))
    w.release()
    frames = sample_video(video, 2.0, tmp_path / "out")
    assert [p.name for p in frames] == [f"drive_t{ms:08d}.png" for ms in (0, 500, 1000, 1500, 2000)]
    first = frames[0].stat().st_mtime_ns
    assert sample_video(video, 2.0, tmp_path / "out") == frames and frames[0].stat().st_mtime_ns == first
    assert len(sample_video(video, 1.0, tmp_path / "out")) == 3  # another fps: sampled again (0, 1, 2 s)
    ckpt = _tiny_checkpoint(tmp_path / "road.pth", road_bias=8.0)
    refs, _ = index_scenes(_frames_config(video, ckpt, fps=4.0), tmp_path / "run")
    assert len(refs) == 10 and refs[0].scene_id == "drive_t00000000"
    assert (tmp_path / "run" / "scenes" / "video" / "drive" / "frames.json").is_file()


def test_a_missing_checkpoint_or_root_is_a_clear_error(tmp_path):
    _write_frames(tmp_path / "footage", 1)
    with pytest.raises(FileNotFoundError, match="scenes.segmenter.checkpoint: .*nope.pth not found"):
        index_scenes(_frames_config(tmp_path / "footage", tmp_path / "nope.pth"), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a video"):
        index_scenes(_frames_config(tmp_path / "missing", tmp_path / "nope.pth"), tmp_path / "run")


# ------------------------------------------------------------------ unlabeled frames: the real ESPNetv2


def test_pseudo_labels_of_a_real_driving_frame_with_the_real_espnetv2(tmp_path, monkeypatch):
    frame = shared_or_skip("driving_frames", "MaybeShewill-CV_lanenet-lane-detection__train_example_0000.png")
    ckpt = shared_or_skip("espnetv2", ESPNET[1])
    (tmp_path / "footage").mkdir()
    shutil.copy(frame, tmp_path / "footage" / frame.name)
    cfg = SynthConfig.model_validate(
        {"scenes": {"kind": "frames", "root": str(tmp_path / "footage"), "segmenter": {"checkpoint": str(ckpt)}}}
    )
    refs, rejects = index_scenes(cfg, tmp_path / "run")
    assert not rejects and len(refs) == 1
    scene = load_scene(refs[0])
    assert scene.image.shape == (576, 1024, 3)  # 1280x720 at ESPNetv2's working width 1024
    road = scene.label == ROAD
    assert road.mean() > 0.2  # a highway frame: road fills the lower half
    assert road[-50:, 400:624].mean() > 0.9 and road[:100].mean() == 0  # in front of the car, never in the sky
    # the gate: exactly the pixels whose softmax confidence is below 0.9 are void, the rest are the arg-max
    from tasks.checkpoints import frozen_segmenter

    seg = frozen_segmenter(cfg.scenes.segmenter)
    with torch.inference_mode():
        p = torch.softmax(seg(torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 255), 1)[0]
    conf, arg = p.max(0)
    confident = conf.numpy() >= 0.9
    assert 0.4 < confident.mean() < 0.99
    agree = (scene.label == np.where(confident, arg.numpy(), VOID)).mean()
    assert agree > 0.999  # threshold ties at float precision aside
    h = estimate_horizon(scene.label, ["road"])
    assert h.source in ("vanishing_point", "road") and 150 < h.row < 300

    monkeypatch.setattr("tasks.checkpoints.frozen_segmenter", lambda *a: pytest.fail("cache not reused"))
    assert index_scenes(cfg, tmp_path / "run")[0] == refs


# ------------------------------------------------------------------ labelled datasets in their own layouts


def _label_png(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label, mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _rgb(path: Path, size=(32, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), 120, np.uint8))


def _halves(top: int, bottom: int, size=(32, 16)) -> np.ndarray:
    lab = np.full((size[1], size[0]), top, np.uint8)
    lab[size[1] // 2 :] = bottom
    return lab


def test_acdc_layout_with_condition_tags(tmp_path):
    root = tmp_path / "acdc"
    for cond, seq, name in [("fog", "GOPR0475", "GOPR0475_frame_000041"), ("night", "GOPR0351", "GOPR0351_frame_1")]:
        _rgb(root / "rgb_anon" / cond / "train" / seq / f"{name}_rgb_anon.png")
        if cond == "fog":
            _label_png(root / "gt" / cond / "train" / seq / f"{name}_gt_labelTrainIds.png", _halves(SKY, ROAD))
        else:  # labelIds only: sky 23, road 7 through cityscapesscripts
            _label_png(root / "gt" / cond / "train" / seq / f"{name}_gt_labelIds.png", _halves(23, 7))
    _rgb(root / "rgb_anon" / "rain" / "train" / "GOPR0400" / "GOPR0400_frame_2_rgb_anon.png")  # no label
    (root / "rgb_anon" / "snow" / "train" / "GOPR0122").mkdir(parents=True)
    cfg = SynthConfig.model_validate({"scenes": {"kind": "acdc", "root": str(root)}})  # all four conditions
    refs, rejects = index_scenes(cfg, tmp_path / "run")
    assert [(r.scene_id, r.condition, r.label_kind) for r in refs] == [
        ("acdc_GOPR0475_frame_000041", "fog", "labelTrainIds"),
        ("acdc_GOPR0351_frame_1", "night", "labelIds"),
    ]
    assert [r.reason for r in rejects] == ["missing_label", "missing_condition"]  # rain's label; snow: no frames
    assert "GOPR0400_frame_2_gt_labelTrainIds" in rejects[0].detail and "snow" in rejects[1].item
    for ref in refs:
        scene = load_scene(ref)
        assert scene.condition == ref.condition
        assert (scene.label[:8] == SKY).all() and (scene.label[8:] == ROAD).all()
    with pytest.raises(FileNotFoundError, match="ACDC: no frames for snow"):
        index_scenes(
            SynthConfig.model_validate({"scenes": {"kind": "acdc", "root": str(root), "conditions": ["snow"]}}),
            tmp_path,
        )


def test_bdd100k_layout_reads_train_ids(tmp_path):
    root = tmp_path / "bdd"
    for name in ("0a0a0b1a-7c39d841", "0a0b16e2-93f8c456"):
        _rgb(root / "images" / "10k" / "val" / f"{name}.jpg")
    lab = _halves(SKY, ROAD)
    lab[0, 0] = 200  # a value that is no trainId: void, and counted
    _label_png(root / "labels" / "sem_seg" / "masks" / "val" / "0a0a0b1a-7c39d841.png", lab)
    cfg = SynthConfig.model_validate({"scenes": {"kind": "bdd100k", "root": str(root), "split": "val"}})
    refs, rejects = index_scenes(cfg, tmp_path / "run")
    assert [r.scene_id for r in refs] == ["bdd100k_0a0a0b1a-7c39d841"]
    assert [r.reason for r in rejects] == ["missing_label"]
    scene = load_scene(refs[0], max_unknown_label_fraction=0.01)
    assert scene.label[0, 0] == VOID and scene.unknown_label_pixels == 1 and (scene.label[8:] == ROAD).all()


def test_mapillary_vistas_classes_map_to_train_ids_through_the_documented_table(tmp_path):
    import yaml

    from data_manifests import MANIFEST_DIR

    table = yaml.safe_load((MANIFEST_DIR / "mapillary_vistas.yaml").read_text())["classes"]
    assert len(table) == 66 and table[13]["name"] == "construction--flat--road" and table[65]["readable"] == "Unlabeled"

    root = tmp_path / "vistas"
    _rgb(root / "training" / "images" / "abc.jpg", size=(64, 32))
    # Vistas ids: 13 road, 24 lane marking, 27 sky, 55 car, 1 ground animal, 65 unlabeled, 10 parking
    ids = np.array([13, 24, 27, 55, 1, 65, 10, 2], np.uint8)  # and 2 curb
    lab = np.repeat(np.repeat(ids[None], 32, axis=0), 8, axis=1)  # 8 columns per class
    _label_png(root / "training" / "labels" / "abc.png", lab, palette=True)
    cfg = SynthConfig.model_validate({"scenes": {"kind": "mapillary", "root": str(root), "width": 32}})
    refs, _ = index_scenes(cfg, tmp_path / "run")
    assert refs[0].size == (32, 16) and refs[0].label_kind == "mapillary_v1.2"
    scene = load_scene(refs[0])
    assert scene.image.shape == (16, 32, 3)
    sidewalk = train_id("sidewalk")
    assert scene.label[0, ::4].tolist() == [ROAD, ROAD, SKY, CAR, VOID, VOID, VOID, sidewalk]  # curb -> sidewalk
    native = index_scenes(
        SynthConfig.model_validate({"scenes": {"kind": "mapillary", "root": str(root), "width": None}}), tmp_path
    )
    assert load_scene(native[0][0]).label.shape == (32, 64)


def test_acdc_condition_tags_reach_meta_json_and_the_manifest(tmp_path):
    """An ACDC fog scene composited without synthetic weather: the sample's condition is the scene's tag."""
    from tasks.sample_format import decode_parts, read_tar_samples
    from tasks.shards import read_table
    from tasks.synth.validate import validate_shard_set
    from tests.helpers import make_shards, tiny_synth_config

    root = tmp_path / "acdc"
    lab = np.full((128, 256), train_id("building"), np.uint8)
    lab[:40] = SKY
    cv2.fillPoly(lab, [np.array([[0, 127], [255, 127], [140, 50], [116, 50]], np.int32)], int(ROAD))
    for i, cond in enumerate(("fog", "snow")):
        name = f"GOPR000{i}_frame_000001"
        _rgb(root / "rgb_anon" / cond / "val" / f"GOPR000{i}" / f"{name}_rgb_anon.png", size=(256, 128))
        _label_png(root / "gt" / cond / "val" / f"GOPR000{i}" / f"{name}_gt_labelTrainIds.png", lab)
    cfg = tiny_synth_config(tmp_path)
    cfg = SynthConfig.model_validate(
        cfg.model_dump()
        | {"scenes": {"kind": "acdc", "root": str(root), "split": "val", "conditions": ["fog", "snow"]}}
    )
    cfg.num_samples = 4
    make_shards(cfg, tmp_path / "run")
    shard_dir = tmp_path / "run" / "shards"
    assert validate_shard_set(shard_dir)[1] == []
    rows = read_table(shard_dir / "samples.parquet")
    assert sorted(r["condition"] for r in rows) == ["fog", "fog", "snow", "snow"]
    import tarfile

    with tarfile.open(sorted(shard_dir.glob("*.tar"))[0]) as tar:
        samples, _ = read_tar_samples(tar, "x")
    meta = json.loads(decode_parts(*next(iter(samples.items())), "x").meta)
    assert meta["scene_condition"] == meta["condition"] in ("fog", "snow") and meta["weather"] is None
    assert "pseudo_label" not in meta

    # synthetic rain over the real frames: the clear sample keeps the scene's tag, the rainy one is "rain"
    wet = SynthConfig.model_validate(cfg.model_dump() | {"weather": {"mode": "every", "conditions": {"rain": 1.0}}})
    wet.num_samples = 2
    make_shards(wet, tmp_path / "wet")
    assert validate_shard_set(tmp_path / "wet" / "shards")[1] == []
    rows = read_table(tmp_path / "wet" / "shards" / "samples.parquet")
    by_scene: dict = {}
    for r in rows:
        by_scene.setdefault(r["scene_id"], []).append(r["condition"])
    tags = {"acdc_GOPR0000_frame_000001": "fog", "acdc_GOPR0001_frame_000001": "snow"}
    assert by_scene and all(sorted(c) == sorted([tags[sid], "rain"]) for sid, c in by_scene.items())


def test_scenes_option_replaces_the_source_before_the_overrides(tmp_path):
    from schemas import load_config

    # a Cityscapes config run on demo scenes, with an override of the demo section (the synth/diffusion test path)
    cfg = load_config("configs/diffusion.yaml", {"scenes.demo": {"num_scenes": 2}}, scenes="demo")
    assert cfg.scenes.kind == "demo" and cfg.scenes.demo.num_scenes == 2
    # a path: the config's own source with that root; a demo config becomes Cityscapes at that root
    assert load_config("configs/frames.yaml", scenes=str(tmp_path)).scenes.root == tmp_path
    demo = load_config("configs/demo.yaml", scenes=str(tmp_path)).scenes
    assert demo.kind == "cityscapes" and demo.root == tmp_path


def test_cityscapes_configs_keep_the_hash_and_the_dataset_json_they_had_before_the_registry():
    from schemas import load_config

    # hashes at commit 78e6e21, before scene sources had their own configs: those versions are not made again
    assert load_config("configs/cityscapes_coco.yaml").content_hash() == "89176e88c68fe741"
    assert load_config("configs/diffusion.yaml").content_hash() == "e3401f79168944f4"
    # a dataset.json of then carries the demo defaults in a Cityscapes section; it still loads (AnomalyMix reads it)
    old = load_config("configs/cityscapes_coco.yaml").model_dump(mode="json")
    old["scenes"]["demo"] = {"num_scenes": 8, "width": 1024, "height": 512}
    assert SynthConfig.model_validate(old).content_hash() == "89176e88c68fe741"
    old["scenes"]["demo"]["num_scenes"] = 3  # not the legacy defaults: a field of another source, refused
    with pytest.raises(ValueError, match="scenes.demo"):
        SynthConfig.model_validate(old)
    # the frames source's batch size and device change how labels are made, not the shards
    a = load_config("configs/frames.yaml")
    b = load_config("configs/frames.yaml", {"scenes.batch_size": 16, "scenes.device": "cpu"})
    assert (
        a.content_hash()
        == b.content_hash()
        != load_config("configs/frames.yaml", {"scenes.threshold": 0.8}).content_hash()
    )
