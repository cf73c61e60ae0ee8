import numpy as np
import pytest

from schemas import PlacementConfig
from tasks.horizon import estimate_horizon
from tasks.synth.placement import NoPlacementError, PlacementGrid, place_object, place_objects


def _road_scene(h=200, w=400, horizon=80):
    lab = np.full((h, w), 10, np.uint8)  # sky
    lab[horizon:] = 0  # road everywhere below the horizon
    return lab


def test_height_is_linear_in_distance_below_horizon():
    cfg = PlacementConfig(candidates=64, search_stride=1, min_height_px=2, max_height_frac=1.0, min_support=0.0)
    lab = _road_scene()
    for seed in range(5):
        grid = PlacementGrid.from_label(lab, cfg)
        box, foot, h_px, score, n = place_object(grid, 10, 20, 1.0, 80.0, 1.25, cfg, np.random.default_rng(seed))
        # H·(v − v_h)/h_c with H = 1 m, h_c = 1.25 m, foot at the bottom of the box
        assert h_px == round((foot[1] - 80.0) / 1.25)
        assert box[3] == foot[1] and box[3] - box[1] == h_px
        assert box[2] - box[0] == max(1, round(h_px * 10 / 20))
        assert 0 < score <= 1 and n == 64


def test_objects_do_not_overlap_and_avoid_key_instances():
    lab = _road_scene()
    lab[120:200, 150:250] = 13  # a car in the middle of the road
    cfg = PlacementConfig(
        objects_per_scene=(4, 4), candidates=64, search_stride=2, min_height_px=4, max_key_overlap=0.0
    )
    for seed in range(10):
        placed = place_objects(
            lab, [(f"o{i}", "box", 20, 20) for i in range(4)], 80.0, 1.2, cfg, np.random.default_rng(seed)
        )
        assert placed
        boxes = [p.box for p in placed]
        for i, a in enumerate(boxes):
            x0, y0, x1, y1 = a
            assert not (lab[y0:y1, x0:x1] == 13).any()
            for b in boxes[i + 1 :]:
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w <= 0 or overlap_h <= 0


def test_allow_cover_key_lets_objects_onto_cars():
    lab = _road_scene()
    lab[81:] = 13  # the whole ground is car; road only in the base row strip below
    lab[196:] = 0
    cfg = PlacementConfig(candidates=64, search_stride=1, min_height_px=2, min_support=0.1, allow_cover_key=True)
    placed = place_objects(lab, [("o", "box", 10, 10)], 80.0, 1.2, cfg, np.random.default_rng(0))
    assert placed and (lab[placed[0].box[1] : placed[0].box[3], placed[0].box[0] : placed[0].box[2]] == 13).any()
    cfg_strict = cfg.model_copy(update={"allow_cover_key": False})
    assert place_objects(lab, [("o", "box", 10, 10)], 80.0, 1.2, cfg_strict, np.random.default_rng(0)) == []


def test_no_drivable_pixels_is_a_clear_error():
    lab = np.full((64, 64), 10, np.uint8)
    with pytest.raises(NoPlacementError, match="no drivable pixels"):
        place_objects(lab, [("o", "box", 5, 5)], 30.0, 1.2, PlacementConfig(), np.random.default_rng(0))


def test_same_rng_same_placement():
    lab = _road_scene()
    cfg = PlacementConfig(min_height_px=4)
    objs = [("a", "dog", 30, 20), ("b", "cat", 10, 10)]
    a = place_objects(lab, objs, 80.0, 1.2, cfg, np.random.default_rng(7))
    b = place_objects(lab, objs, 80.0, 1.2, cfg, np.random.default_rng(7))
    assert a == b


def test_horizon_estimate_is_the_top_of_the_largest_road_region():
    lab = _road_scene(horizon=96)
    h = estimate_horizon(lab, ["road"], stride=4)
    assert h.source == "road" and h.row == 96
    assert estimate_horizon(np.full((40, 40), 10, np.uint8), ["road"]).source == "default"
