"""The weather stage: the depth model, every registered condition, object visibility, the config and the plans."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from schemas import PlacementConfig, SynthConfig, WeatherConfig, WeatherRecord
from schemas.records import ObjectRecord
from schemas.registries import WEATHER
from tasks.conditions import CLEAR, conditions, families
from tasks.labels import ANOMALY, train_id
from tasks.object_bank import BankObject
from tasks.scenes import Scene
from tasks.seeding import derive_seed, rng_for
from tasks.synth.compositor import Compositor
from tasks.synth.plan import SamplePlan, plan_samples
from tasks.weather import (
    Frame,
    depth_map,
    object_contrast,
    render,
)

ROAD, SIDEWALK, TERRAIN = train_id("road"), train_id("sidewalk"), train_id("terrain")
BUILDING, VEGETATION, SKY, CAR = train_id("building"), train_id("vegetation"), train_id("sky"), train_id("car")
ADVERSE = ("fog", "sandstorm", "rain", "snow", "night", "frost")
SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------- scenes


def street_label(h: int = 128, w: int = 256) -> np.ndarray:
    """Sky on top, buildings and trees across the horizon (row 48), road / sidewalk / terrain below, one car."""
    lab = np.full((h, w), SKY, np.uint8)
    lab[32:64] = BUILDING
    lab[32:64, w // 2 :] = VEGETATION
    lab[64:] = ROAD
    lab[64:, : w // 8] = SIDEWALK
    lab[64:, -w // 8 :] = TERRAIN
    lab[70:90, 40:80] = CAR
    return lab


def street_image(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """A colour per class plus texture; values in [20, 220] (no 'lights' for the night glows)."""
    rng = np.random.default_rng(seed)
    palette = {
        SKY: (120, 160, 210),
        BUILDING: (110, 90, 80),
        VEGETATION: (60, 120, 50),
        ROAD: (95, 95, 100),
        SIDEWALK: (150, 140, 135),
        TERRAIN: (120, 140, 70),
        CAR: (180, 40, 40),
        ANOMALY: (40, 200, 200),
    }
    img = np.zeros((*label.shape, 3), np.int16)
    for tid, colour in palette.items():
        img[label == tid] = colour
    img += rng.integers(-20, 21, img.shape, dtype=np.int16)
    return np.clip(img, 20, 220).astype(np.uint8)


def street_frame(label: np.ndarray | None = None) -> Frame:
    return Frame(street_label() if label is None else label, horizon=48.0, camera_height=1.5, focal=250.0)


def with_object(label: np.ndarray, box=(120, 80, 140, 104)) -> tuple[np.ndarray, np.ndarray]:
    """``label`` with an anomaly pasted in ``box`` (x0, y0, x1, y1), and its mask."""
    x0, y0, x1, y1 = box
    lab = label.copy()
    lab[y0:y1, x0:x1] = ANOMALY
    mask = np.zeros(label.shape, np.uint8)
    mask[y0:y1, x0:x1] = 255
    return lab, mask


def grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)


def lab_of(rgb255) -> np.ndarray:
    px = np.asarray(rgb255, np.float32).reshape(1, 1, 3) / 255
    return cv2.cvtColor(px, cv2.COLOR_RGB2Lab)[0, 0].astype(np.float64)


# ---------------------------------------------------------------- the registry


def test_conditions_are_clear_then_the_registered_effects_by_family():
    assert conditions() == (CLEAR, *WEATHER)
    assert conditions("weather") == (CLEAR, "fog", "sandstorm", "rain", "snow", "night", "frost")
    assert conditions("corruption")[1:3] == ("c_gaussian_noise", "c_shot_noise") and len(conditions("corruption")) == 20
    assert list(families()) == ["weather", "corruption"]
    assert conditions()[0] == "clear"
    assert set(ADVERSE) <= set(conditions())
    assert len(set(conditions())) == len(conditions())


# ---------------------------------------------------------------- the depth model


def test_depth_map_matches_the_flat_ground_model_by_hand():
    H, W, horizon, f, hc, far = 64, 32, 20.0, 100.0, 1.5, 1000.0
    lab = np.full((H, W), SKY, np.uint8)
    lab[10:30] = BUILDING  # façade across the horizon, standing on the road at row 30
    lab[30:] = ROAD
    lab[40:50, 5:10] = CAR  # a car whose foot is road row 50
    lab[:, 31] = BUILDING  # a column with no ground at all
    lab[:, 30] = BUILDING
    lab[55:, 30] = SIDEWALK  # sidewalk is ground too
    d = depth_map(lab, horizon, hc, f, far)
    assert d.shape == (H, W) and d.dtype == np.float32
    # ground rows: f·h / (v − v_h)
    assert d[60, 0] == pytest.approx(150 / 40)
    assert d[30, 15] == pytest.approx(150 / 10)
    for v in range(30, H):
        assert d[v, 3] == pytest.approx(f * hc / (v - horizon), rel=1e-6)
    # the car stands on road row 50: every car pixel is at that row's depth
    assert np.allclose(d[40:50, 5:10], 150 / 30)
    # the façade above the road stands on road row 30, above and below the horizon alike
    assert d[12, 20] == pytest.approx(150 / 10)
    assert d[25, 20] == pytest.approx(150 / 10)
    # the façade column with sidewalk from row 55 stands on row 55
    assert d[40, 30] == pytest.approx(150 / 35)
    assert d[56, 30] == pytest.approx(150 / 36)
    # sky is at max_depth
    assert np.all(d[:10, :30] == far)
    # no ground below: above (or at) the horizon far away, below it on its own row
    assert d[5, 31] == far and d[int(horizon), 31] == far
    assert d[40, 31] == pytest.approx(150 / 20)
    assert d[63, 31] == pytest.approx(150 / 43)


def test_depth_map_clamps_to_max_depth_and_the_horizon_row_is_far():
    lab = np.full((40, 8), ROAD, np.uint8)  # road even above the horizon (row 10)
    d = depth_map(lab, 10.0, 2.0, 100.0, 150.0)
    assert np.all(d[:11] == 150.0)  # at and above the horizon
    assert d[11, 0] == 150.0  # 200 m, clamped to 150
    assert d[12, 0] == 100.0  # 200 / 2
    assert d[30, 0] == pytest.approx(10.0)
    assert np.all(d <= 150.0)


def test_frame_depth_and_transmission_are_the_model_at_half_resolution():
    lab = street_label()
    fr = street_frame(lab)
    assert fr.half_shape == (64, 128)
    d = fr.depth_half
    assert d.shape == (64, 128)
    assert np.array_equal(d, depth_map(lab[::2, ::2], 24.0, 1.5, 125.0, 1000.0))
    # half row r is full row 2r: (f/2)·h / (r − v_h/2) = f·h / (2r − v_h)
    assert d[50, 64] == pytest.approx(250 * 1.5 / (100 - 48))
    assert d[2, 10] == 1000.0
    t = fr.transmission(0.02)
    assert t.dtype == np.float32 and np.allclose(t, np.exp(-0.02 * d), rtol=1e-5)
    assert np.array_equal(fr.ground(), np.isin(lab, [ROAD, SIDEWALK, TERRAIN]).astype(np.uint8))
    assert np.array_equal(fr.wet(), np.isin(lab, [ROAD, SIDEWALK]).astype(np.uint8))
    assert np.array_equal(fr.sky(2), (lab[::2, ::2] == SKY).astype(np.uint8))


# ---------------------------------------------------------------- every condition


@pytest.fixture(scope="module")
def street():
    lab, mask = with_object(street_label())
    img = street_image(lab)
    img[40:44, 200:204] = 250  # a lamp (non-sky, bright): exercises the night glows
    return img, lab, mask


@pytest.mark.parametrize("name", ADVERSE)
def test_every_condition_is_deterministic_and_changes_the_image_only(name, street):
    img, lab, _ = street
    img_before, lab_before = img.copy(), lab.copy()
    fr = street_frame(lab)

    def run(seed, severity=0.6):
        return render(name, img, fr, severity, np.random.default_rng(seed))

    out, params = run(1)
    again, params_again = run(1)
    other, _ = run(2)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out.tobytes() == again.tobytes() and params == params_again
    assert out.tobytes() != other.tobytes()  # every effect draws something from the rng
    diff = np.abs(out.astype(np.int16) - img).mean()
    assert diff > 3.0, f"{name} barely changes the image (mean |Δ| {diff:.2f})"
    # inputs are not modified: the composite is shared by all conditions of one plan
    assert np.array_equal(img, img_before)
    assert np.array_equal(lab, lab_before) and np.array_equal(fr.label, lab_before)
    # params: JSON values, recordable in meta.json as they are
    assert isinstance(params, dict) and params
    assert json.loads(json.dumps(params)) == params
    assert WeatherRecord(condition=name, severity=0.6, seed=1, params=params).model_dump()["params"] == params
    for v in params.values():
        assert type(v) in (float, int, str, bool, list), f"{name}: {type(v)}"


@pytest.mark.parametrize("name", ADVERSE)
def test_severity_changes_the_effect_and_is_clipped_to_0_1(name, street):
    img, lab, _ = street
    fr = street_frame(lab)
    light = render(name, img, fr, 0.0, np.random.default_rng(5))[0]
    heavy = render(name, img, fr, 1.0, np.random.default_rng(5))[0]
    clipped = render(name, img, fr, 3.0, np.random.default_rng(5))[0]
    below = render(name, img, fr, -1.0, np.random.default_rng(5))[0]
    assert light.tobytes() != heavy.tobytes()
    assert np.abs(heavy.astype(np.int16) - img).mean() > np.abs(light.astype(np.int16) - img).mean()
    assert clipped.tobytes() == heavy.tobytes() and below.tobytes() == light.tobytes()


def test_clear_is_the_input_unchanged(street):
    img, lab, _ = street
    before = img.copy()
    out, params = render(CLEAR, img, street_frame(lab), 0.9, np.random.default_rng(0))
    assert out is img and params == {}
    assert np.array_equal(img, before)


def test_render_rejects_unknown_conditions_and_bad_images(street):
    img, lab, _ = street
    fr = street_frame(lab)
    with pytest.raises(ValueError, match="hail"):
        render("hail", img, fr, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        render("fog", img.astype(np.float32), fr, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="fog"):
        render("fog", img[:64], fr, 0.5, np.random.default_rng(0))


def test_effect_options_reach_the_effect(street):
    img, lab, _ = street
    fr = street_frame(lab)
    _, params = render("fog", img, fr, 0.5, np.random.default_rng(0), {"beta": (0.02, 0.02)})
    assert params["beta"] == 0.02 and params["visibility_m"] == pytest.approx(3.912 / 0.02)
    with_glow = render("night", img, fr, 0.5, np.random.default_rng(0))[1]
    without = render("night", img, fr, 0.5, np.random.default_rng(0), {"glows": False})[1]
    assert with_glow["glow_pixels"] > 0 and without["glow_pixels"] == 0


# ---------------------------------------------------------------- fog


def test_fog_lowers_object_and_global_contrast_with_severity(street):
    img, lab, mask = street
    fr = street_frame(lab)
    box = [(120, 80, 140, 104)]
    contrast = [object_contrast(img, mask, box)[0]]  # the clear image first
    rms = []  # not the clear image: the fog lifts the whole far field to the airlight, which can add contrast
    for s in SEVERITIES:
        out = render("fog", img, fr, s, np.random.default_rng(3))[0]
        contrast.append(object_contrast(out, mask, box)[0])
        rms.append(grey(out).std())
    assert all(a > b for a, b in zip(contrast, contrast[1:], strict=False)), contrast
    assert all(a > b for a, b in zip(rms, rms[1:], strict=False)), rms
    assert contrast[-1] < 0.8 * contrast[0]


@pytest.mark.parametrize("severity", [0.3, 1.0])
def test_fog_is_the_scattering_model(severity):
    H, W, horizon, f, hc = 128, 256, 32.0, 200.0, 1.5
    lab = np.full((H, W), SKY, np.uint8)
    lab[32:] = ROAD
    J = np.array([60, 90, 120], np.float64)
    img = np.ascontiguousarray(np.broadcast_to(J.astype(np.uint8), (H, W, 3)))
    fr = Frame(lab, horizon, hc, f, max_depth=1000.0)
    out, params = render("fog", img, fr, severity, np.random.default_rng(7))
    beta = params["beta"]
    assert beta == pytest.approx(0.004 * (0.06 / 0.004) ** severity, abs=1e-6)  # rounded to 6 places
    A = np.round(np.asarray(params["airlight"]) * 255)
    assert A[0] == A[1] and 0.72 * 255 - 1 <= A[0] <= 0.9 * 255 + 1
    for v, d in ((8, 1000.0), (20, 1000.0), (110, f * hc / (110 - horizon)), (126, f * hc / (126 - horizon))):
        t = math.exp(-beta * d)
        expected = J * t + A * (1 - t)
        got = out[v, W // 2].astype(np.float64)
        assert np.abs(got - expected).max() <= 2.0, (v, d, got, expected)
    assert np.all(out[:, 0] == out[:, W // 3])  # depth is the same along a row


def _flat_street(H=128, W=256, horizon=32.0):
    """Sky above, a building band standing on terrain (not wet) below the horizon: flat colours."""
    lab = np.full((H, W), SKY, np.uint8)
    lab[20:40] = BUILDING  # stands on the terrain starting at row 40
    lab[40:] = TERRAIN
    J = np.array([60, 90, 120], np.float64)
    img = np.ascontiguousarray(np.broadcast_to(J.astype(np.uint8), (H, W, 3)))
    return lab, img, J


def test_rain_veil_is_the_scattering_model_with_contrast_kept_at_200_m():
    lab, img, J = _flat_street()
    f, hc, horizon = 200.0, 1.5, 32.0
    fr = Frame(lab, horizon, hc, f, max_depth=1000.0)
    no_drops = {"streaks": (0.0, 0.0), "wet_darkening": (0.0, 0.0)}
    out, params = render("rain", img, fr, 0.6, np.random.default_rng(3), no_drops)
    v = params["veil"]
    assert v == pytest.approx(0.1 + 0.25 * 0.6)
    beta = -math.log(1 - v) / 200  # by construction: a point 200 m away keeps 1 − veil of its contrast
    g = params["airlight"]
    A = np.round(np.array([g, g, g * 1.03]) * 255)
    building_depth = f * hc / (40 - horizon)  # the foot of the building: the first terrain row below it
    for row, d in ((5, 1000.0), (30, building_depth), (100, f * hc / (100 - horizon))):
        t = math.exp(-beta * d)
        assert np.abs(out[row, 128].astype(float) - (J * t + A * (1 - t))).max() <= 2.0, (row, d)


def test_sandstorm_is_the_tinted_scattering_model_without_particles_or_patches():
    lab, img, J = _flat_street()
    f, hc, horizon = 200.0, 1.5, 32.0
    fr = Frame(lab, horizon, hc, f, max_depth=1000.0)
    plain = {"particles": (0.0, 0.0), "patchiness": 0.0}
    s = 0.5
    out, params = render("sandstorm", img, fr, s, np.random.default_rng(3), plain)
    beta = params["beta"]
    assert beta == pytest.approx(0.01 * 12**s, abs=1e-6) and params["particles"] == 0
    colour = np.asarray(params["airlight"])
    tint = 1.0 - 0.35 * s * (1.0 - colour / colour.max())  # dust takes the blue first
    Jt = np.round(J / 255 * tint * 255)
    for row, d in ((30, f * hc / (40 - horizon)), (120, f * hc / (120 - horizon))):
        t = math.exp(-beta * d)
        expected = Jt * t + np.round(colour * 255) * (1 - t)
        assert np.abs(out[row, 128].astype(float) - expected).max() <= 2.0, (row, d)
    assert np.abs(out[5, 128].astype(float) - np.round(colour * 255)).max() <= 2.0  # the sky is all dust


# ---------------------------------------------------------------- the other conditions


def test_night_darkens_monotonically_with_severity(street):
    img, lab, _ = street
    fr = street_frame(lab)
    means = [img.mean()]
    for s in SEVERITIES:
        out, params = render("night", img, fr, s, np.random.default_rng(4))
        means.append(out.mean())
        assert params["stops"] == pytest.approx(1 + 2 * s) and params["gamma"] == pytest.approx(1 + 0.3 * s)
    assert all(a > b for a, b in zip(means, means[1:], strict=False)), means
    assert means[-1] < 0.35 * means[0]


def test_snow_brightens_a_dark_scene(street):
    _, lab, _ = street
    fr = street_frame(lab)
    rng = np.random.default_rng(0)
    dark = rng.integers(10, 50, (*lab.shape, 3), dtype=np.uint8)
    for s in (0.2, 1.0):
        out = render("snow", dark, fr, s, np.random.default_rng(9))[0]
        assert out.mean() > dark.mean() + 5, (s, out.mean(), dark.mean())
    light = render("snow", dark, fr, 0.2, np.random.default_rng(9))[0]
    heavy = render("snow", dark, fr, 1.0, np.random.default_rng(9))[0]
    assert heavy.mean() > light.mean()


def test_rain_darkens_the_wet_road_more_than_the_rest():
    H, W = 128, 240
    lab = np.full((H, W), SKY, np.uint8)
    lab[64:, :80] = ROAD  # wet
    lab[64:, 80:160] = TERRAIN  # ground, but not wet
    lab[32:, 160:] = BUILDING  # a façade at the same depths (no ground below: it stands on its own rows)
    img = np.full((H, W, 3), 150, np.uint8)
    fr = Frame(lab, 48.0, 1.5, 250.0)
    for s in (0.3, 1.0):
        out = render("rain", img, fr, s, np.random.default_rng(11))[0].astype(np.float64)
        delta = (out - img).mean(axis=2)
        road, terrain, facade = delta[64:, 8:72], delta[64:, 88:152], delta[64:, 168:232]
        for dry in (terrain, facade):
            # medians ignore the sparse streaks; means include them
            assert np.median(road) < np.median(dry) - 10, (s, np.median(road), np.median(dry))
            assert road.mean() < dry.mean() - 10
        assert np.median(road) < 0  # the wet road is darker than the dry one
        assert abs(np.median(terrain) - np.median(facade)) <= 2  # the same veil at the same depth


def test_frost_is_thicker_at_the_border_than_in_the_centre(street):
    img, lab, _ = street
    fr = street_frame(lab)
    H, W = lab.shape
    for s in (0.0, 0.5, 1.0):
        out = render("frost", img, fr, s, np.random.default_rng(2))[0]
        diff = np.abs(out.astype(np.float64) - img).mean(axis=2)
        band = 12
        border = np.ones((H, W), bool)
        border[band:-band, band:-band] = False
        centre = diff[H // 4 : 3 * H // 4, W // 4 : 3 * W // 4]
        assert diff[border].mean() > 2 * centre.mean(), (s, diff[border].mean(), centre.mean())


# ---------------------------------------------------------------- object visibility


def test_object_contrast_is_the_lab_distance_to_the_surround():
    img = np.full((20, 20, 3), 128, np.uint8)
    img[8:12, 8:12] = 255
    mask = np.zeros((20, 20), np.uint8)
    mask[8:12, 8:12] = 255
    expected = float(np.linalg.norm(lab_of((255, 255, 255)) - lab_of((128, 128, 128))))
    assert expected > 40  # white vs mid grey: about 46 ΔE
    assert object_contrast(img, mask, [(8, 8, 12, 12)]) == [pytest.approx(expected, abs=1e-3)]
    # an object the colour of its surround is invisible
    flat = np.full((20, 20, 3), 128, np.uint8)
    assert object_contrast(flat, mask, [(8, 8, 12, 12)]) == [0.0]
    # a red object on a green surround, two boxes at once, one without pasted pixels
    two = np.zeros((20, 40, 3), np.uint8)
    two[:, :] = (0, 200, 0)
    two[8:12, 8:12] = (200, 0, 0)
    m2 = np.zeros((20, 40), np.uint8)
    m2[8:12, 8:12] = 1
    red_green = float(np.linalg.norm(lab_of((200, 0, 0)) - lab_of((0, 200, 0))))
    got = object_contrast(two, m2, [(8, 8, 12, 12), (28, 8, 32, 12)])
    assert got == [pytest.approx(red_green, abs=1e-3), 0.0]


def test_object_contrast_ignores_other_pasted_pixels_in_the_ring():
    img = np.full((20, 20, 3), 128, np.uint8)
    img[8:12, 8:12] = 255
    img[12, 8:12] = 0  # a black pasted row of another object right below, inside the ring
    mask = np.zeros((20, 20), np.uint8)
    mask[8:13, 8:12] = 255
    expected = float(np.linalg.norm(lab_of((255, 255, 255)) - lab_of((128, 128, 128))))
    assert object_contrast(img, mask, [(8, 8, 12, 12)]) == [pytest.approx(expected, abs=1e-3)]


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"conditions": {"fog": 1.0, "hail": 1.0}}, "hail"),
        ({"options": {"tornado": {}}}, "tornado"),
        ({"options": {"fog": {"density": 0.5}}}, "density"),
        ({"options": {"night": {"glow": False}}}, "glow"),
        ({"severity": (0.8, 0.2)}, "severity"),
        ({"severity": (0.2, 1.5)}, "severity"),
        ({"conditions": {"fog": 0.0, "rain": 0.0}}, "not all zero"),
        ({"conditions": {"fog": -1.0, "rain": 2.0}}, "non-negative"),
        ({"conditions": {}}, "weight"),
        ({"clear": 1.5}, "clear"),
        ({"mode": "sometimes"}, "mode"),
    ],
)
def test_weather_config_rejects_bad_values_by_name(kwargs, bad):
    with pytest.raises(ValidationError, match=bad):
        WeatherConfig(**kwargs)


def test_weather_config_defaults_and_rendered_order():
    w = WeatherConfig()
    assert list(w.conditions) == list(conditions("weather")[1:]) and set(w.conditions.values()) == {1.0}
    assert w.mode == "random" and w.rendered() == conditions("weather")
    # registry order, whatever the order in the config
    w = WeatherConfig(mode="every", conditions={"night": 1.0, "fog": 2.0, "frost": 0.5})
    assert w.rendered() == ("clear", "fog", "night", "frost")
    assert WeatherConfig(options={"night": {"glows": False}, "fog": {"beta": (0.01, 0.02)}}).options["night"] == {
        "glows": False
    }


def test_planned_samples():
    assert SynthConfig(num_samples=3).planned_samples() == 3
    assert SynthConfig(num_samples=3, weather={"mode": "random"}).planned_samples() == 3
    assert SynthConfig(num_samples=3, weather={"mode": "every"}).planned_samples() == 21
    assert SynthConfig(num_samples=5, weather={"mode": "every", "conditions": {"rain": 1}}).planned_samples() == 10


def test_content_hash_without_weather_is_the_hash_before_weather_existed():
    from schemas import load_config

    # the hashes these configs had before the weather stage and objects.exclude_classes existed (commit ea58139):
    # runs made then keep their versions, banks and trained models
    assert load_config("configs/demo.yaml").content_hash() == "63cb264efd843f30"
    old = "4fbba042cfccbbe8"
    cfg = SynthConfig()
    assert cfg.content_hash() == old
    assert SynthConfig(weather=None).content_hash() == old
    assert SynthConfig.model_validate({"weather": None}).content_hash() == old
    with_weather = SynthConfig(weather=WeatherConfig())
    assert with_weather.content_hash() != old
    assert SynthConfig(weather={"clear": 0.5}).content_hash() != with_weather.content_hash()
    assert SynthConfig(weather={"mode": "every"}).content_hash() != with_weather.content_hash()
    assert SynthConfig(weather=WeatherConfig()).content_hash() == with_weather.content_hash()
    assert SynthConfig(workers=7).content_hash() == old
    assert SynthConfig(objects={"demo_objects": True, "exclude_classes": ["cup"]}).content_hash() != old


# ---------------------------------------------------------------- the plans

SCENES = ["city_a.000", "city_b", "city_c"]


def test_plans_without_weather_are_the_old_plans():
    plans = plan_samples(SCENES, 7, seed=5)
    order = rng_for(5, "scene-order").permutation(3)
    assert len(plans) == 7
    for i, p in enumerate(plans):
        s = int(order[i % 3])
        assert p == SamplePlan(
            index=i,
            key=f"{i:07d}_{SCENES[s]}".replace(".", "_"),
            scene_index=s,
            seed=derive_seed(5, "sample", i),
            condition="clear",
            severity=0.0,
        )
    assert sorted(p.scene_index for p in plans[:3]) == [0, 1, 2]  # every scene before any repeats
    assert plan_samples(SCENES, 7, 5, None) == plans


def test_plans_in_mode_every_are_one_sample_per_condition():
    w = WeatherConfig(mode="every", severity=(0.4, 0.9))
    plans = plan_samples(SCENES, 3, seed=1, weather=w)
    base = plan_samples(SCENES, 3, seed=1)
    assert len(plans) == 21 == SynthConfig(num_samples=3, weather=w).planned_samples()
    assert [p.index for p in plans] == list(range(21))
    assert len({p.key for p in plans}) == 21
    for i, b in enumerate(base):
        group = plans[7 * i : 7 * i + 7]
        assert [p.condition for p in group] == list(conditions("weather"))
        assert [p.key for p in group] == [f"{b.key}__{c}" for c in conditions("weather")]
        assert {p.scene_index for p in group} == {b.scene_index}
        assert {p.seed for p in group} == {b.seed}
        assert group[0].severity == 0.0
        sev = {p.severity for p in group[1:]}
        assert len(sev) == 1 and 0.4 <= sev.pop() <= 0.9
    assert plan_samples(SCENES, 3, seed=1, weather=w) == plans


def test_plans_in_mode_random_draw_conditions_by_weight():
    w = WeatherConfig(clear=0.3, severity=(0.5, 0.8), conditions={"fog": 3.0, "rain": 1.0})
    plans = plan_samples(SCENES, 2000, seed=2, weather=w)
    assert plans == plan_samples(SCENES, 2000, seed=2, weather=w)
    assert plans != plan_samples(SCENES, 2000, seed=3, weather=w)
    assert len(plans) == 2000 and [p.index for p in plans] == list(range(2000))
    # the composites are those of the plans without weather: weather only tags them
    base = plan_samples(SCENES, 2000, seed=2)
    assert [(p.key, p.scene_index, p.seed) for p in plans] == [(b.key, b.scene_index, b.seed) for b in base]
    conds = [p.condition for p in plans]
    assert set(conds) == {"clear", "fog", "rain"}
    assert abs(conds.count("clear") / 2000 - 0.3) < 0.05
    assert abs(conds.count("fog") / (conds.count("fog") + conds.count("rain")) - 0.75) < 0.05
    for p in plans:
        if p.condition == CLEAR:
            assert p.severity == 0.0
        else:
            assert 0.5 <= p.severity <= 0.8
    assert len({p.severity for p in plans if p.condition != CLEAR}) > 100


def test_plans_in_mode_random_with_a_fixed_severity_and_no_clear():
    w = WeatherConfig(clear=0.0, severity=(0.6, 0.6))
    plans = plan_samples(SCENES, 300, seed=0, weather=w)
    assert {p.severity for p in plans} == {0.6}
    assert CLEAR not in {p.condition for p in plans}
    assert {p.condition for p in plans} == set(conditions("weather")[1:])


# ---------------------------------------------------------------- the compositor


def _compositor(weather) -> tuple[Compositor, Scene]:
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[..., :3] = (230, 230, 40)
    rgba[4:36, 3:27, 3] = 255
    rec = ObjectRecord(
        object_id="o1", source="file", class_name="box", origin="x.png", width=30, height=40, mask_area=768
    )
    cfg = SynthConfig(
        seed=1,
        placement=PlacementConfig(
            objects_per_scene=(2, 2), min_height_px=6, search_stride=2, default_height_m=(0.8, 1.2)
        ),
        weather=weather,
    )
    lab = street_label()
    scene = Scene(scene_id="s0", image=street_image(lab, seed=1), label=lab)
    return Compositor(cfg, [BankObject(rec, rgba)]), scene


def test_compositor_frame_uses_the_camera_or_the_config():
    comp, scene = _compositor(WeatherConfig(focal_px_per_width=1.5, max_depth_m=400.0))
    plan = plan_samples(["s0"], 1, seed=1)[0]
    c = comp.compose(scene, plan)
    fr = comp.frame(scene, c)
    assert fr.focal == pytest.approx(1.5 * 256) and fr.max_depth == 400.0
    assert fr.horizon == c.meta.horizon and fr.camera_height == pytest.approx(1.22)
    assert fr.label is c.label
    cam = {"intrinsic": {"fy": 2262.5, "v0": 513.0}, "extrinsic": {"z": 1.18, "pitch": 0.04}}
    fr = comp.frame(Scene("s0", scene.image, scene.label, camera=cam), c)
    assert fr.focal == pytest.approx(2262.5 * 128 / 1024) and fr.camera_height == pytest.approx(1.18)
    # without a weather config: the WeatherConfig defaults
    comp, _ = _compositor(None)
    assert comp.frame(scene, c).focal == pytest.approx(1.105 * 256)


def test_compositor_weathered_records_the_condition_and_keeps_labels():
    comp, scene = _compositor(WeatherConfig(mode="every"))
    plans = plan_samples(["s0"], 1, seed=1, weather=comp.cfg.weather)
    c = comp.compose(scene, plans[0])
    assert len(c.meta.objects) == 2
    image, label, mask = c.image.copy(), c.label.copy(), c.mask.copy()
    by_cond = {p.condition: comp.weathered(c, scene, p) for p in plans}
    assert list(by_cond) == list(conditions("weather"))
    clear = by_cond[CLEAR]
    assert np.array_equal(clear.image, image) and clear.meta.weather is None and clear.meta.condition == "clear"
    assert [o.visibility for o in clear.meta.objects] == [o.visibility_clear for o in clear.meta.objects]
    assert clear.meta.objects[0].visibility == object_contrast(image, mask, [clear.meta.objects[0].box])[0]
    for plan in plans[1:]:
        w = by_cond[plan.condition]
        assert w.meta.key == plan.key and w.meta.condition == plan.condition
        assert w.meta.weather.condition == plan.condition and w.meta.weather.severity == plan.severity
        assert w.meta.weather.seed == derive_seed(plan.seed, "weather", plan.condition)
        expect, params = render(
            plan.condition, image, comp.frame(scene, c), plan.severity, np.random.default_rng(w.meta.weather.seed)
        )
        assert np.array_equal(w.image, expect) and w.meta.weather.params == params
        assert np.array_equal(w.label, label) and np.array_equal(w.mask, mask)
        assert [o.visibility_clear for o in w.meta.objects] == [o.visibility for o in clear.meta.objects]
        json.loads(w.meta.model_dump_json())
    # the shared composite is untouched
    assert np.array_equal(c.image, image) and np.array_equal(c.label, label) and np.array_equal(c.mask, mask)
    assert c.meta.condition == "clear" and c.meta.key == plans[0].key
    fog = by_cond["fog"]
    assert all(o.visibility < o.visibility_clear for o in fog.meta.objects)


def test_compositor_without_weather_returns_the_composite_as_it_is():
    comp, scene = _compositor(None)
    plan = plan_samples(["s0"], 1, seed=1)[0]
    c = comp.compose(scene, plan)
    assert comp.weathered(c, scene, plan) is c
    assert c.meta.condition == "clear" and c.meta.weather is None
    assert all(o.visibility is None for o in c.meta.objects)


def test_sensor_noise_has_the_poisson_gaussian_std_of_each_level():
    from tasks.weather import _sensor_noise, noise_table

    photons, read, gamma = 300.0, 0.005, 1.2
    table = noise_table(photons, read, gamma)
    rng = np.random.default_rng(0)
    for level in (20, 100, 200):
        x = (level / 255) ** (2.2 / gamma)  # linear light behind the display level
        sigma = np.sqrt(x / photons + read**2) * (gamma / 2.2) * x ** (gamma / 2.2 - 1) * 255  # by hand
        out = _sensor_noise(np.full((256, 256, 3), level, np.uint8), rng, table).astype(np.float64)
        assert out.mean() == pytest.approx(level, abs=0.3)
        assert out.std() == pytest.approx(sigma, rel=0.05), level
    # more photons, less noise
    assert noise_table(3000.0, read, gamma)[100].std() < table[100].std() / 2


def test_night_glows_come_from_lamps_not_from_lane_markings():
    label = street_label()
    image = street_image(label)
    image[40:48, 20:28] = 255  # a lamp on the building
    image[100:108, 140:148] = 255  # a lane marking on the road
    frame = street_frame(label)

    def night_at(glows):
        return render("night", image, frame, 0.6, np.random.default_rng(0), {"glows": glows})

    lit, params = night_at(True)
    dark, _ = night_at(False)
    assert params["glow_pixels"] > 0
    halo = lambda img, y, x: grey(img)[y - 8 : y + 16, x - 8 : x + 16].mean()  # noqa: E731
    assert halo(lit, 40, 20) > halo(dark, 40, 20) + 5  # the lamp blooms
    assert halo(lit, 100, 140) == pytest.approx(halo(dark, 100, 140), abs=1.0)  # the marking does not
