"""Illumination harmonization: the pasted object takes the light and colour of where it stands.

``LabHarmonizer`` (Reinhard-style statistics transfer, applied locally): in CIE Lab, the object's
per-channel mean/std over its mask are moved towards those of the scene in a ring around the placement,

    c' = (c − μ_obj)·(σ_bg / σ_obj) + μ_bg,      c_out = c + s·(c' − c)

with strength ``s`` for L and for (a, b) separately and σ ratios clamped to [0.5, 2]. The alpha edge is
feathered *inwards* (min(m, blur(m))), so every pixel outside the binary mask stays the scene's own —
exactly Eq. 1's ``Pad(1−m)⊙x_in``. Optional Poisson blending uses ``cv2.seamlessClone``.

``StyleAlignHarmonizer`` (``method: style``) first aligns the object's *style* to the scene — the shortcut a
network would otherwise learn (Zhang et al., "Anomaly-Aware Semantic Segmentation via Style-Aligned OoD
Augmentation", who use a GAN, ISSA, we cannot ship) — with a weights-free Fourier-domain low-frequency
amplitude swap (FDA: Yang & Soatto, "FDA: Fourier Domain Adaptation for Semantic Segmentation", CVPR 2020,
Eq. 2), then applies the Lab statistics transfer above.

A harmonizer is anything with the ``Harmonizer`` call signature, registered in ``schemas.registries.HARMONIZERS`` by the name
``harmonize.method`` takes, so a learned model can be dropped in.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from schemas import HarmonizationRecord, HarmonizeConfig
from schemas.registries import HARMONIZERS


class Harmonizer(Protocol):
    def __call__(
        self, scene: np.ndarray, obj_rgb: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]
    ) -> tuple[np.ndarray, np.ndarray, HarmonizationRecord]:
        """(scene HxWx3 uint8, object hxwx3 uint8, mask hxw bool, box x0,y0,x1,y1) ->
        (object hxwx3 uint8, alpha hxw float32 in [0, 1] with alpha == 0 outside mask, record)."""
        ...


def feather_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Inward-feathered alpha: 1 deep inside, soft near the edge, exactly 0 outside ``mask``."""
    m = mask.astype(np.float32)
    if sigma <= 0:
        return m
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return np.minimum(m, cv2.GaussianBlur(m, (k, k), sigma, borderType=cv2.BORDER_CONSTANT))


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2Lab)


def surround_region(scene_shape: tuple[int, ...], box: tuple[int, int, int, int], context: float):
    """Slices of the ring region: the box grown by ``context`` object heights, clipped to the image."""
    x0, y0, x1, y1 = box
    pad = max(2, int(round(context * (y1 - y0))))
    H, W = scene_shape[:2]
    return slice(max(0, y0 - pad), min(H, y1 + pad)), slice(max(0, x0 - pad), min(W, x1 + pad))


@HARMONIZERS.register("lab")
class LabHarmonizer:
    def __init__(self, cfg: HarmonizeConfig):
        self.cfg = cfg

    def __call__(self, scene, obj_rgb, mask, box):
        cfg = self.cfg
        x0, y0, x1, y1 = box
        ys, xs = surround_region(scene.shape, box, cfg.context)
        # surround statistics on every 2nd pixel: the same means/stds at a quarter of the cost
        region = scene[ys, xs]
        around = np.full(region.shape[:2], 255, np.uint8)
        around[y0 - ys.start : y1 - ys.start, x0 - xs.start : x1 - xs.start][mask] = 0
        region, around = np.ascontiguousarray(region[::2, ::2]), np.ascontiguousarray(around[::2, ::2])
        mu_b, sd_b = (v.ravel() for v in cv2.meanStdDev(_lab(region), mask=around))
        lab = _lab(obj_rgb)
        mu_o, sd_o = (v.ravel() for v in cv2.meanStdDev(lab, mask=mask.astype(np.uint8)))
        mu_o, mu_b = mu_o.astype(np.float32), mu_b.astype(np.float32)
        sd_o, sd_b = sd_o.astype(np.float32) + 1e-3, sd_b.astype(np.float32) + 1e-3
        ratio = np.clip(sd_b / sd_o, 0.5, 2.0)
        target = (lab - mu_o) * ratio + mu_b
        strength = np.array([cfg.strength_l, cfg.strength_ab, cfg.strength_ab], np.float32)
        out_lab = lab + strength * (target - lab)
        out = cv2.cvtColor(out_lab, cv2.COLOR_Lab2RGB)
        out = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
        alpha = feather_alpha(mask, cfg.feather_px)
        params: dict = {
            "strength_l": cfg.strength_l,
            "strength_ab": cfg.strength_ab,
            "mu_obj": [round(float(v), 3) for v in mu_o],
            "mu_bg": [round(float(v), 3) for v in mu_b],
            "sd_ratio": [round(float(v), 3) for v in ratio],
            "feather_px": cfg.feather_px,
            "poisson": False,
        }
        if cfg.poisson:
            out, params["poisson"] = poisson_blend(scene, out, mask, box)
        return out, alpha, HarmonizationRecord(method="lab", params=params)


@HARMONIZERS.register("none")
class IdentityHarmonizer:
    """No colour change; only the inward feather (``method: none``)."""

    def __init__(self, cfg: HarmonizeConfig):
        self.cfg = cfg

    def __call__(self, scene, obj_rgb, mask, box):
        alpha = feather_alpha(mask, self.cfg.feather_px)
        return obj_rgb, alpha, HarmonizationRecord(method="none", params={"feather_px": self.cfg.feather_px})


def poisson_blend(scene: np.ndarray, obj_rgb: np.ndarray, mask: np.ndarray, box) -> tuple[np.ndarray, bool]:
    """Gradient-domain blend of the object into the scene (cv2.seamlessClone, NORMAL_CLONE).

    seamlessClone rejects masks whose bounding rect reaches the image border, so the mask is clamped
    one pixel inside the image; on any OpenCV error the unblended object is returned with ``False``.
    """
    x0, y0, x1, y1 = box
    H, W = scene.shape[:2]
    m = mask.astype(np.uint8) * 255
    m[:, :1] = 0 if x0 == 0 else m[:, :1]
    m[:1, :] = 0 if y0 == 0 else m[:1, :]
    m[:, -1:] = 0 if x1 >= W else m[:, -1:]
    m[-1:, :] = 0 if y1 >= H else m[-1:, :]
    if m.max() == 0 or min(m.shape) < 3:
        return obj_rgb, False
    # seamlessClone places the *mask's* bounding-rect centre at ``center``
    ys, xs = np.nonzero(m)
    center = (x0 + (xs.min() + xs.max() + 1) // 2, y0 + (ys.min() + ys.max() + 1) // 2)
    try:
        blended = cv2.seamlessClone(
            cv2.cvtColor(obj_rgb, cv2.COLOR_RGB2BGR),
            cv2.cvtColor(scene, cv2.COLOR_RGB2BGR),
            m,
            center,
            cv2.NORMAL_CLONE,
        )
    except cv2.error:
        return obj_rgb, False
    return cv2.cvtColor(blended[y0:y1, x0:x1], cv2.COLOR_BGR2RGB), True


def low_frequency_amplitude_swap(src: np.ndarray, ref: np.ndarray, beta: float) -> tuple[np.ndarray, int]:
    """FDA (Yang & Soatto, CVPR 2020, Eq. 2): ``src``'s Fourier amplitude inside the centred low-frequency square
    of half-width b = ⌊beta·min(h, w)⌋ is replaced by ``ref``'s (same shape, per channel); the phase — the
    content — stays ``src``'s. Float in, float64 out; returns (image, b)."""
    h, w = src.shape[:2]
    b = int(np.floor(beta * min(h, w)))
    fs = np.fft.fftshift(np.fft.fft2(src.astype(np.float64), axes=(0, 1)), axes=(0, 1))
    fr = np.fft.fftshift(np.fft.fft2(ref.astype(np.float64), axes=(0, 1)), axes=(0, 1))
    amp, phase = np.abs(fs), np.angle(fs)
    cy, cx = h // 2, w // 2
    band = np.s_[max(0, cy - b) : cy + b + 1, max(0, cx - b) : cx + b + 1]
    amp[band] = np.abs(fr[band])
    return np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * phase), axes=(0, 1)), axes=(0, 1)).real, b


def luminance_amplitude_swap(
    obj_rgb: np.ndarray, ref_rgb: np.ndarray, beta: float, mask: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """The swap on the CIE Lab lightness L only (uint8 RGB in and out). Swapped in RGB, or on a and b, the
    scene's colour amplitudes meet the phases of an object's nearly flat colour channels — noise — and paint
    coloured blotches on it; its colour is the Lab statistics transfer's job. With ``mask``, the crop's pixels
    outside the object (its source background, never pasted) take the object's mean lightness first, so neither
    the background's brightness nor the silhouette's edge enters the spectrum."""
    lab = _lab(obj_rgb)
    light = lab[..., 0].copy()
    if mask is not None and mask.any() and not mask.all():
        light[~mask] = light[mask].mean()
    lab[..., 0], b = low_frequency_amplitude_swap(light, _lab(ref_rgb)[..., 0], beta)
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), b


def surround_patch(scene: np.ndarray, box: tuple[int, int, int, int], context: float, size: tuple[int, int]):
    """The scene around ``box`` (the box grown by ``context`` object heights), resized to ``size`` (h, w)."""
    ys, xs = surround_region(scene.shape, box, context)
    return cv2.resize(scene[ys, xs], (size[1], size[0]), interpolation=cv2.INTER_AREA)


@HARMONIZERS.register("style")
class StyleAlignHarmonizer:
    """Style alignment, then the Lab transfer (``method: style``): the object crop's low-frequency lightness amplitude
    (band ``fda_beta``) is swapped with that of the scene around its placement, then ``LabHarmonizer`` moves its
    Lab statistics to the surround's. Parameters of both land in the sample's ``meta.json``."""

    def __init__(self, cfg: HarmonizeConfig):
        self.cfg = cfg
        self.lab = LabHarmonizer(cfg)

    def __call__(self, scene, obj_rgb, mask, box):
        ref = surround_patch(scene, box, self.cfg.context, obj_rgb.shape[:2])
        styled, band = luminance_amplitude_swap(obj_rgb, ref, self.cfg.fda_beta, mask)
        out, alpha, rec = self.lab(scene, styled, mask, box)
        params = {"fda_beta": self.cfg.fda_beta, "fda_band_px": band} | rec.params
        return out, alpha, HarmonizationRecord(method="style", params=params)


def make_harmonizer(cfg: HarmonizeConfig) -> Harmonizer:
    return HARMONIZERS.get(cfg.method)(cfg)
