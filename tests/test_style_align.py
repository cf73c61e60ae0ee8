"""Style alignment (``harmonize.method: style``): the FDA low-frequency amplitude swap by its definition, and
the style statistics of the pasted object moving toward the scene's compared with no alignment and with the
Lab transfer alone, on real photos when ../shared has them and on textured synthetic images otherwise."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from schemas import HarmonizeConfig, SynthConfig
from tasks.synth.harmonize import low_frequency_amplitude_swap, make_harmonizer, surround_patch


def _band_amplitude(img: np.ndarray, beta: float) -> np.ndarray:
    """|FFT| (fftshifted) inside the centred square FDA swaps, per channel."""
    h, w = img.shape[:2]
    b = int(np.floor(beta * min(h, w)))
    f = np.abs(np.fft.fftshift(np.fft.fft2(img.astype(np.float64), axes=(0, 1)), axes=(0, 1)))
    return f[h // 2 - b : h // 2 + b + 1, w // 2 - b : w // 2 + b + 1]


def _lab_stats(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[mask]
    return np.concatenate([lab.mean(0), lab.std(0)])


def _textured(shape, base, amp, freq, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    wave = np.sin(xx / freq) * np.cos(yy / (1.7 * freq))
    img = np.asarray(base, np.float64) + amp * wave[..., None] + rng.normal(0, 6, (*shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_the_swap_takes_the_reference_amplitude_in_the_band_and_keeps_the_rest():
    src = _textured((40, 50), (200, 120, 90), 40, 3.0, 0)
    ref = _textured((40, 50), (50, 60, 110), 15, 9.0, 1)
    out, b = low_frequency_amplitude_swap(src, ref, 0.1)
    assert b == 4
    # in the band: the reference's amplitude; outside it: the source's; the DC term is the mean colour
    assert np.allclose(_band_amplitude(out, 0.1), _band_amplitude(ref, 0.1), rtol=1e-6)

    def shifted(im):
        return np.abs(np.fft.fftshift(np.fft.fft2(im.astype(np.float64), axes=(0, 1)), axes=(0, 1)))

    far = np.ones((40, 50), bool)
    far[20 - 4 : 20 + 5, 25 - 4 : 25 + 5] = False  # the band around the centre (20, 25)
    assert np.allclose(shifted(out)[far], shifted(src)[far], rtol=1e-6)
    assert np.allclose(out.mean((0, 1)), ref.astype(float).mean((0, 1)))
    # beta 0 swaps the DC term only: the mean colour moves, the texture (deviation from the mean) stays
    dc, b0 = low_frequency_amplitude_swap(src, ref, 0.0)
    assert b0 == 0
    dev = lambda im: im.astype(float) - im.astype(float).mean((0, 1))  # noqa: E731
    assert np.allclose(dev(dc), dev(src))


def _cases():
    """(scene, object RGB, mask, box): a warm bright textured object on a dark bluish scene of another texture."""
    scene = _textured((160, 240), (45, 55, 85), 25, 8.0, 2)
    obj = _textured((48, 40), (225, 190, 150), 35, 2.0, 3)
    mask = np.zeros(obj.shape[:2], bool)
    cv2.ellipse(mask.view(np.uint8), (20, 24), (16, 21), 0, 0, 360, 1, -1)
    yield scene, obj, mask, (100, 90, 140, 138)
    # the same object in a crop that keeps its source's white background outside the mask (as bank crops do)
    white = obj.copy()
    white[~mask] = 255
    yield scene, white, mask, (100, 90, 140, 138)
    from tests.helpers import shared_or_skip

    try:
        frames = sorted(shared_or_skip("cityscapes_frames").glob("*leftImg8bit.png"))[:1]
        photos = sorted(shared_or_skip("object_photos").glob("*zebra*"))[:1]
    except pytest.skip.Exception:
        return
    if frames and photos:
        frame = cv2.cvtColor(cv2.imread(str(frames[0])), cv2.COLOR_BGR2RGB)
        frame = cv2.resize(frame, (512, 256), interpolation=cv2.INTER_AREA)
        photo = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
        photo = cv2.resize(photo, (64, 64), interpolation=cv2.INTER_AREA)
        m = np.zeros((64, 64), bool)
        m[6:58, 10:54] = True
        yield frame, photo, m, (200, 150, 264, 214)


@pytest.mark.parametrize("case", range(3))
def test_style_statistics_of_the_pasted_object_move_toward_the_scene(case):
    cases = list(_cases())
    if case >= len(cases):
        pytest.skip("real frames and photos come from ../shared")
    scene, obj, mask, box = cases[case]
    ref = surround_patch(scene, box, 0.5, obj.shape[:2])
    target_lab = _lab_stats(ref, np.ones(ref.shape[:2], bool))
    beta = HarmonizeConfig().fda_beta
    target_amp = np.log1p(_band_amplitude(ref, beta))

    def distances(method: str) -> tuple[float, float]:
        out, alpha, rec = make_harmonizer(HarmonizeConfig(method=method))(scene, obj, mask, box)
        lab = np.abs(_lab_stats(out, mask) - target_lab)[:3].mean()  # the Lab means
        amp = np.abs(np.log1p(_band_amplitude(out, beta)) - target_amp).mean()
        return lab, amp

    none, lab_only, style = distances("none"), distances("lab"), distances("style")
    assert style[0] < 0.6 * none[0]  # Lab means much closer to the scene's than without alignment
    assert style[1] < 0.6 * none[1]  # and the low-frequency amplitude spectrum (RGB) too
    assert style[1] < lab_only[1]  # which the Lab transfer alone does not do as well


def test_the_style_record_lands_in_meta_and_the_config_names_come_from_the_registry():
    scene, obj, mask, box = next(iter(_cases()))
    _, alpha, rec = make_harmonizer(HarmonizeConfig(method="style", fda_beta=0.05))(scene, obj, mask, box)
    assert rec.method == "style" and rec.params["fda_beta"] == 0.05 and rec.params["fda_band_px"] == 2
    assert {"strength_l", "mu_bg", "sd_ratio"} <= set(rec.params)
    assert alpha[~mask].max() == 0  # outside the mask the scene stays the scene
    with pytest.raises(ValueError, match="registered: lab, none, style"):
        SynthConfig(harmonize={"method": "issa"})
