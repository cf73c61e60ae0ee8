"""Adverse conditions rendered over a whole composite (scene and pasted objects together).

The conditions are the entries of ``schemas.registries.WEATHER``, registered here with ``@register_weather(name)``;
``tasks.conditions`` lists them (``clear`` first) for the synthesis stage, the manifests, the benchmark readers and
the evaluation.

Every effect is a function ``(image, frame, severity, rng, **options) -> (image, params)`` on an H×W×3 uint8 RGB
image, registered with ``@register_weather(name)``. ``severity`` in [0, 1] moves every parameter from a light to
a heavy version of the condition; ``rng`` (from the sample's seed) decides the rest; ``params`` are what was drawn,
recorded in the sample's ``meta.json``. The label never changes.

Depth comes from the flat-ground model of the placement stage (``tasks.synth.placement``): a ground pixel at row
``v`` below the horizon ``v_h`` is at ``Z = f·h_c / (v − v_h)``; a pixel that is not ground takes the depth of the
first ground pixel below it in its column (where it stands: objects, cars and façades are billboards on their
foot point); sky, and everything at or above the horizon with no ground below, is at ``max_depth``.

Speed: full-resolution work is done with OpenCV on uint8 (LUTs, at most one ``cv2.blendLinear`` per effect); maps that
are smooth (transmission, noise, frost texture) are computed at half or quarter resolution and resized.
``make bench-weather`` prints the cost of each effect against encoding the sample.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from statistics import NormalDist

import cv2
import numpy as np

from schemas import ADVERSE, CLEAR
from schemas.registries import WEATHER
from tasks.labels import train_ids

#: Cityscapes classes the depth model treats as ground (objects stand on them) and as sky.
GROUND_CLASSES = ("road", "sidewalk", "terrain")
WET_CLASSES = ("road", "sidewalk")
SKY_CLASS = "sky"


#: the families of conditions: physically modelled weather (severity in [0, 1], over the scene's depth) and the
#: ImageNet-C corruptions (``tasks.corruptions``: severity levels 1-5, as published)
WEATHER_FAMILY = "weather"


@dataclass(frozen=True)
class Effect:
    """One condition of ``WEATHER``: its render function and the keyword options it takes, with their defaults;
    its ``family``, and its severity ``levels`` (None: any severity in [0, 1])."""

    name: str
    render: Callable[..., tuple[np.ndarray, dict]]
    options: dict  # keyword options and their defaults
    family: str = WEATHER_FAMILY
    levels: tuple[int, ...] | None = None

    def severity(self, value: float) -> float | int:
        """``value`` as this effect's severity: clipped to [0, 1], or one of ``levels`` (else an error)."""
        if self.levels is None:
            return float(np.clip(value, 0, 1))
        if value not in self.levels:
            raise ValueError(f"{self.name}: severity {value!r} is not one of its levels {list(self.levels)}")
        return int(value)

    def check_options(self, options: dict) -> dict:
        """``options`` checked against the keyword parameters: known names, values shaped like the defaults (a bool,
        a number, a range of as many numbers), and a trial render on a small street at severities 0 and 1, so a bad
        value fails when the config is read (``WeatherConfig``), not in a shard worker."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"weather {self.name}: unknown options {unknown}; known: {', '.join(self.options)}")
        for k, v in options.items():
            if not _shaped_like(v, self.options[k]):
                raise ValueError(
                    f"weather {self.name}: option {k} = {v!r} is not shaped like its default {self.options[k]!r}"
                )
        label = np.full((32, 64), train_ids(["sky"])[0], np.uint8)
        label[12:] = train_ids(["road"])[0]
        frame = Frame(label, horizon=10.0, camera_height=1.2, focal=70.0)
        image = np.full((32, 64, 3), 128, np.uint8)
        for severity in (0.0, 1.0) if self.levels is None else (self.levels[0], self.levels[-1]):
            try:
                self.render(image, frame, severity, np.random.default_rng(0), **options)
            except (ValueError, ArithmeticError, TypeError) as e:
                raise ValueError(f"weather {self.name}: options {options} fail at severity {severity}: {e}") from None
        return options


def register_weather(name: str, family: str = WEATHER_FAMILY, levels: tuple[int, ...] | None = None):
    """Register ``render(image, frame, severity, rng, **options) -> (image, params)`` as condition ``name`` in
    ``WEATHER`` (its keyword-only parameters are its options), of ``family``, with discrete severity ``levels``
    or (None) any severity in [0, 1]."""

    def deco(fn):
        if name in (CLEAR, ADVERSE):
            raise ValueError(f"{name!r} is reserved ({CLEAR}: no effect; {ADVERSE}: every condition but clear)")
        sig = inspect.signature(fn)
        options = {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
        WEATHER.register(name, Effect(name, fn, options, family, levels))
        return fn

    return deco


def _shaped_like(value, default) -> bool:
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0

    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list)) and len(value) == len(default) and all(map(number, value))
    return number(value)


# ---------------------------------------------------------------- the scene's geometry


@dataclass
class Frame:
    """What an effect knows about the scene besides its pixels: labels and the flat-ground camera."""

    label: np.ndarray  # H×W trainIds (254 anomaly, 255 void)
    horizon: float  # image row
    camera_height: float  # metres
    focal: float  # pixels, at this image's size
    max_depth: float = 1000.0  # metres: sky and the far end of the road

    @property
    def shape(self) -> tuple[int, int]:
        return self.label.shape

    @property
    def half_shape(self) -> tuple[int, int]:
        return self.label[::2, ::2].shape

    def ground(self, step: int = 1) -> np.ndarray:
        return class_mask(self.label[::step, ::step], GROUND_CLASSES)

    def wet(self) -> np.ndarray:
        return class_mask(self.label, WET_CLASSES)

    def sky(self, step: int = 1) -> np.ndarray:
        return class_mask(self.label[::step, ::step], (SKY_CLASS,))

    @cached_property
    def _depth_table(self) -> tuple[np.ndarray, np.ndarray]:
        return depth_table(self.label[::2, ::2], self.horizon / 2, self.camera_height, self.focal / 2, self.max_depth)

    @cached_property
    def depth_half(self) -> np.ndarray:
        """Depth in metres at half resolution (float32), see the module docstring."""
        table, index = self._depth_table
        return table[index]

    def transmission(self, beta: float | np.ndarray) -> np.ndarray:
        """``t = exp(−β·d)`` at half resolution (float32); ``beta`` a scalar or a half-resolution map."""
        if np.ndim(beta) == 0:
            table, index = self._depth_table
            return np.exp(-float(beta) * table).astype(np.float32)[index]
        return np.exp(-np.asarray(beta, np.float32) * self.depth_half).astype(np.float32)


def class_mask(label: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """uint8 0/1 mask of the pixels of ``names`` (one ``cv2.LUT`` pass)."""
    lut = np.zeros(256, np.uint8)
    lut[train_ids(list(names))] = 1
    return cv2.LUT(np.ascontiguousarray(label), lut)


def depth_table(
    label: np.ndarray, horizon: float, camera_height: float, focal: float, max_depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """The flat-ground billboard model of the module docstring as ``(table, index)``: ``table[v]`` is the depth
    (metres, float32) of ground row ``v`` and ``table[H]`` is ``max_depth``; ``index`` (H×W int16) is the row each
    pixel stands on (``H`` for the sky). ``table[index]`` is the depth map; a function of depth over the table
    (the transmission) costs one gather instead of a per-pixel ``exp``."""
    H, _ = label.shape
    below = np.arange(H, dtype=np.float32) - horizon
    ground_depth = np.where(below > 0.5, focal * camera_height / np.maximum(below, 0.5), max_depth)
    table = np.append(np.minimum(ground_depth, max_depth), max_depth).astype(np.float32)  # [H]: far
    rows = np.arange(H, dtype=np.int16)[:, None]
    foot = np.where(class_mask(label, GROUND_CLASSES).astype(bool), rows, np.int16(H))[::-1].copy()
    for i in range(1, H):  # bottom-up running minimum: the nearest ground row at or below each pixel
        np.minimum(foot[i], foot[i - 1], out=foot[i])
    foot = foot[::-1]
    # pixels with no ground below them stand on their own row (below the horizon) or are far (above it)
    index = np.where(foot == H, rows, foot)
    index[class_mask(label, (SKY_CLASS,)).astype(bool)] = H
    return table, index


def depth_map(label: np.ndarray, horizon: float, camera_height: float, focal: float, max_depth: float) -> np.ndarray:
    """Per-pixel depth (metres, float32) of the flat-ground billboard model in the module docstring."""
    table, index = depth_table(label, horizon, camera_height, focal, max_depth)
    return table[index]


def full_size(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` resized (bilinear) to ``shape``; unchanged when it has that size already."""
    if a.shape[:2] == tuple(shape):
        return a
    return cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def geometric(lo: float, hi: float, s: float) -> float:
    """``lo`` at severity 0, ``hi`` at severity 1, geometric in between (for scattering coefficients and light)."""
    if lo <= 0 or hi <= 0:
        raise ValueError(f"a geometric range needs positive ends, got ({lo}, {hi})")
    return float(lo * (hi / lo) ** s)


def linear(lo: float, hi: float, s: float) -> float:
    return float(lo + (hi - lo) * s)


def solid(shape: tuple[int, int], colour) -> np.ndarray:
    """An H×W×3 uint8 image of one RGB ``colour`` in [0, 1]."""
    px = np.clip(np.round(np.asarray(colour, np.float64) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(np.tile(px, (shape[1], 1)), (*shape, 3)))


def blend(image: np.ndarray, colour, weight: np.ndarray) -> np.ndarray:
    """``image·(1 − w) + colour·w`` per pixel; ``colour`` an RGB triple in [0, 1] or an image, ``w`` float32 in
    [0, 1] at any resolution (resized to the image's). One ``cv2.blendLinear`` pass on uint8."""
    w = full_size(np.clip(weight, 0.0, 1.0).astype(np.float32), image.shape[:2])
    target = (
        colour if isinstance(colour, np.ndarray) and colour.shape == image.shape else solid(image.shape[:2], colour)
    )
    return cv2.blendLinear(image, target, 1.0 - w, w)


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: int, octaves: int = 3) -> np.ndarray:
    """Value noise in [0, 1] (float32) at ``shape``: ``octaves`` random grids of ``cells``·2^k cells (weights 2^−k),
    summed on a grid four times finer than the finest octave, then resized up once (bicubic)."""
    h, w = shape
    gw = min(w, 4 * cells * 2 ** (octaves - 1))
    gh = max(2, round(gw * h / w))
    out = np.zeros((gh, gw), np.float32)
    total = 0.0
    for k in range(octaves):
        n = cells * 2**k
        grid = rng.random((max(2, round(n * h / max(h, w))), max(2, n)), dtype=np.float32)
        out += cv2.resize(grid, (gw, gh), interpolation=cv2.INTER_CUBIC) / 2**k
        total += 1 / 2**k
    out = cv2.resize(out / total, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _tone_lut(fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A 1×256×3 uint8 LUT from ``fn`` on the 256 levels in [0, 1] (``fn`` returns 256×3 in [0, 1])."""
    x = np.linspace(0.0, 1.0, 256, dtype=np.float64)[:, None].repeat(3, axis=1)
    return np.clip(np.round(fn(x) * 255), 0, 255).astype(np.uint8).reshape(1, 256, 3)


def _streaks(
    shape: tuple[int, int],
    rng: np.random.Generator,
    count: int,
    length: float,
    angle_deg: float,
    thickness: int,
    value: int,
) -> np.ndarray:
    """A uint8 layer of ``count`` anti-aliased straight streaks of about ``length`` px at ``angle_deg`` from
    vertical (rain, blown sand), drawn in one ``cv2.polylines`` call."""
    h, w = shape
    layer = np.zeros(shape, np.uint8)
    if count <= 0:
        return layer
    x = rng.uniform(-0.1 * w, 1.1 * w, count)
    y = rng.uniform(-0.1 * h, 1.1 * h, count)
    ln = length * rng.uniform(0.6, 1.4, count)
    a = math.radians(angle_deg)
    dx, dy = ln * math.sin(a), ln * math.cos(a)
    pts = np.stack([np.stack([x, y], 1), np.stack([x + dx, y + dy], 1)], 1).round().astype(np.int32)
    cv2.polylines(layer, list(pts), False, int(value), int(thickness), cv2.LINE_AA)
    return layer


def _flakes(shape: tuple[int, int], rng: np.random.Generator, count: int, radius: float) -> np.ndarray:
    """Soft round flakes of about ``radius`` px as a float32 opacity map: points on a grid ``radius`` times
    coarser, blurred and resized up (the cost does not grow with the flake size)."""
    h, w = shape
    step = max(1.0, radius)
    gh, gw = max(2, round(h / step)), max(2, round(w / step))
    grid = np.zeros((gh, gw), np.float32)
    if count > 0:
        grid[rng.integers(0, gh, count), rng.integers(0, gw, count)] = rng.uniform(0.6, 1.0, count).astype(np.float32)
    grid = cv2.GaussianBlur(grid, (0, 0), 0.6)
    grid *= 1.0 / max(float(grid.max()), 1e-6)
    return full_size(grid, shape)


# ---------------------------------------------------------------- effects


@register_weather("fog")
def fog(image, frame: Frame, severity, rng, *, beta=(0.004, 0.06), airlight=(0.72, 0.9)):
    """Fog / haze: the atmospheric scattering model ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``.

    Koschmieder's model as used for Foggy Cityscapes (Sakaridis et al., IJCV 2018, Eq. 1); β from ``beta[0]`` (light
    haze, visibility 3.912/β ≈ 980 m) to ``beta[1]`` (dense fog, ≈ 65 m), geometric in the severity; a grey airlight.
    """
    b = geometric(*beta, severity)
    a = float(rng.uniform(*airlight))
    colour = (a, a, min(1.0, a * 1.02))
    weight = 1.0 - frame.transmission(b)
    return blend(image, colour, weight), {"beta": b, "visibility_m": 3.912 / b, "airlight": list(colour)}


@register_weather("sandstorm")
def sandstorm(
    image,
    frame: Frame,
    severity,
    rng,
    *,
    beta=(0.01, 0.12),
    airlight=(0.80, 0.62, 0.36),
    particles=(0.0005, 0.003),
    patchiness=0.6,
):
    """Sandstorm: the scattering model with a brown-yellow airlight and patchy density, plus blowing particles.

    ``t = exp(−β·(1 − p/2 + p·n)·d)`` with ``n`` smooth noise (dust clouds, ``p`` the patchiness); the scene is
    tinted toward the dust colour first (blue is scattered most, Narasimhan & Nayar, IJCV 2002); particles are short
    anti-aliased streaks along the wind whose opacity joins ``1 − t``.
    """
    half = frame.half_shape
    b = geometric(*beta, severity)
    colour = np.clip(np.asarray(airlight) * float(rng.uniform(0.85, 1.05)), 0, 1)
    tint = 1.0 - 0.35 * severity * (1.0 - colour / colour.max())
    image = cv2.LUT(image, _tone_lut(lambda x: x * tint))
    clouds = smooth_noise(half, rng, cells=4)
    t = frame.transmission(b * (1.0 - patchiness / 2 + patchiness * clouds))
    wind = float(rng.uniform(60, 120)) * float(rng.choice([-1, 1]))  # degrees from vertical: near horizontal
    n = int(linear(*particles, severity) * half[0] * half[1])
    dust = _streaks(half, rng, n, length=max(3.0, 0.015 * half[1]), angle_deg=wind, thickness=1, value=255)
    weight = 1.0 - t * (1.0 - dust.astype(np.float32) * (0.7 / 255))
    params = {"beta": b, "visibility_m": 3.912 / b, "airlight": colour.tolist(), "wind_deg": wind, "particles": n}
    return blend(image, colour, weight), params


@register_weather("rain")
def rain(
    image,
    frame: Frame,
    severity,
    rng,
    *,
    streaks=(0.0015, 0.006),
    streak_opacity=(0.3, 0.5),
    veil=(0.1, 0.35),
    wet_darkening=(0.15, 0.4),
):
    """Rain: directional streaks at three depths, a veil that lowers contrast with distance, a darker wet road.

    Streaks are motion-blurred sparse drops (Garg & Nayar, IJCV 2007: a drop images as a streak along its fall
    during the exposure): anti-aliased lines at one wind angle, longer, thicker and brighter near the camera. The
    veil is the scattering model with a grey airlight and ``β`` such that a point 200 m away keeps ``1 − veil`` of
    its contrast. Road and sidewalk get a darker, more contrasted tone curve (a wet surface reflects less diffusely).
    """
    half = frame.half_shape
    dk = linear(*wet_darkening, severity)
    image = image.copy()
    cv2.copyTo(cv2.LUT(image, _tone_lut(lambda x: (1 - dk) * x ** (1 + dk))), frame.wet(), image)
    angle = float(rng.uniform(-20, 20))
    density = linear(*streaks, severity)
    layer = np.zeros(half, np.uint8)
    for length, thick, value, share in ((0.03, 1, 140, 0.6), (0.06, 1, 200, 0.3), (0.11, 2, 255, 0.1)):
        drops = _streaks(half, rng, int(density * share * half[0] * half[1]), length * half[0], angle, thick, value)
        np.maximum(layer, drops, out=layer)
    v = linear(*veil, severity)
    t = frame.transmission(-math.log(1 - v) / 200.0)
    weight = 1.0 - t + t * layer.astype(np.float32) * (linear(*streak_opacity, severity) / 255)
    grey = float(rng.uniform(0.62, 0.75))
    params = {"angle_deg": angle, "drops": int(density * half[0] * half[1]), "veil": v, "wet_darkening": dk}
    return blend(image, (grey, grey, grey * 1.03), weight), params | {"airlight": grey}


@register_weather("snow")
def snow(
    image,
    frame: Frame,
    severity,
    rng,
    *,
    flakes=(0.001, 0.006),
    haze=(0.003, 0.03),
    desaturation=(0.15, 0.5),
    ground_cover=(0.0, 0.45),
):
    """Snow / blizzard: flakes at three depths (larger and fewer near the camera), whitening and low contrast.

    A white scattering veil (``β`` from ``haze``) and a partial snow cover on the ground (smooth noise) whiten the
    scene; colour is pulled toward grey (``desaturation``); flakes are soft discs of radius ≈ 0.2 %, 0.5 % and
    1.2 % of the image height, the near layers sparser than the far one.
    """
    half = frame.half_shape
    k = linear(*desaturation, severity)
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    image = cv2.addWeighted(image, 1 - k, grey, k, 0)
    b = geometric(*haze, severity)
    weight = 1.0 - frame.transmission(b)
    cover = linear(*ground_cover, severity)
    if cover > 0:
        weight = np.maximum(weight, frame.ground(2) * smooth_noise(half, rng, cells=12) * cover)
    density = linear(*flakes, severity) * half[0] * half[1]
    count = 0
    for radius_frac, share in ((0.002, 1.0), (0.005, 0.3), (0.012, 0.08)):
        radius = radius_frac * half[0]
        n = int(density * share / max(1.0, radius) ** 2)
        weight = np.maximum(weight, _flakes(half, rng, n, radius) * 0.95)
        count += n
    white = float(rng.uniform(0.88, 0.97))
    params = {"beta": b, "desaturation": k, "ground_cover": cover, "flakes": count, "airlight": white}
    return blend(image, (white, white, min(1.0, white * 1.03)), weight), params


@register_weather("night")
def night(
    image,
    frame: Frame,
    severity,
    rng,
    *,
    stops=(1.0, 3.0),
    gamma=(1.0, 1.3),
    photons=(3000.0, 150.0),
    read_noise=(0.002, 0.008),
    glows=True,
):
    """Night / low light: exposure drop, gamma, colour-temperature shift, Poisson–Gaussian sensor noise, glows.

    In linear light (sRGB decoded as ``x^2.2``): exposure ``2^−stops``, a warm (sodium / tungsten) or cold (LED)
    white balance, a sky 8× darker still, then display gamma ``x^(γ/2.2)``. Sensor noise follows the
    Poisson–Gaussian model (Foi et al., IEEE TIP 2008, Eq. 2): variance ``x/photons + σ_read²`` in linear light,
    carried through the tone curve to display levels (``noise_table``), per channel. Glows: bright
    pixels of the day image off the sky and the ground (lamps, signs, lights) bloom as a wide halo.
    """
    h, w = frame.shape
    ev = linear(*stops, severity)
    g = linear(*gamma, severity)
    warm = bool(rng.random() < 0.5)
    wb = np.array((1.0, 0.78, 0.5)) if warm else np.array((0.72, 0.85, 1.0))
    wb = 1.0 + (wb - 1.0) * (0.4 + 0.6 * severity)
    exposure = 2.0**-ev

    def tone(x, extra=1.0):
        return np.clip(x**2.2 * exposure * extra * wb, 0, 1) ** (g / 2.2)

    dark = cv2.LUT(image, _tone_lut(tone))
    sky = frame.sky()
    rows = np.flatnonzero(sky.any(axis=1))
    if rows.size:  # the sky's rows only: it is usually the top of the frame
        top, bottom = rows[0], rows[-1] + 1
        sky_tone = cv2.LUT(image[top:bottom], _tone_lut(lambda x: tone(x, 0.125)))
        cv2.copyTo(sky_tone, sky[top:bottom], dark[top:bottom])
    glow_pixels = 0
    if glows:
        small = cv2.resize(image, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        lamps = (frame.sky(4)[:sh, :sw] == 0) & (frame.ground(4)[:sh, :sw] == 0)  # lane markings do not shine
        lights = ((small.max(axis=2) >= 235) & lamps).astype(np.uint8)
        glow_pixels = int(np.count_nonzero(lights)) * 16
        if glow_pixels:
            halo = cv2.GaussianBlur(small * lights[..., None], (0, 0), 0.006 * w)
            halo = cv2.convertScaleAbs(halo, alpha=1.5 + 2.5 * severity)
            dark = cv2.add(dark, full_size(halo, (h, w)))
    peak = geometric(*photons, severity)
    sr = linear(*read_noise, severity)
    out = _sensor_noise(dark, rng, noise_table(peak, sr, g))
    params = {
        "stops": ev,
        "gamma": g,
        "white_balance": "warm" if warm else "cold",
        "photons": peak,
        "read_noise": sr,
        "glow_pixels": glow_pixels,
    }
    return out, params


def noise_table(photons: float, read_noise: float, gamma: float) -> np.ndarray:
    """256×256 int16 table ``T[y, u]``: the noise offset at display level ``y`` for a uniform random byte ``u``.

    The std at ``y`` is ``σ_lin(x)·dy/dx``, with ``x = y^(2.2/γ)`` the linear value behind ``y`` and
    ``σ_lin² = x/photons + read_noise²`` (Poisson–Gaussian, Foi et al., IEEE TIP 2008, Eq. 2); ``u`` picks one of
    256 equal-mass quantiles of the standard normal (inverse-CDF sampling: Gaussian up to 1/256 quantisation)."""
    y = np.arange(256, dtype=np.float64)
    x = np.maximum(y / 255, 1e-3) ** (2.2 / gamma)
    sigma = np.minimum(np.sqrt(x / photons + read_noise**2) * (gamma / 2.2) * x ** (gamma / 2.2 - 1) * 255, 40.0)
    z = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)])
    return np.round(sigma[:, None] * z[None, :]).astype(np.int16)


def _sensor_noise(image: np.ndarray, rng: np.random.Generator, table: np.ndarray) -> np.ndarray:
    """``image`` plus ``table[level, random byte]`` per pixel and channel, drawn at half resolution (each draw
    covers 2×2 pixels, as demosaicing correlates neighbours) and saturated to uint8."""
    h, w = image.shape[:2]
    small = cv2.resize(image, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
    index = small.astype(np.uint16) << 8
    index |= np.frombuffer(rng.bytes(small.size), np.uint8).reshape(small.shape)
    noise = cv2.resize(np.take(table.ravel(), index), (w, h), interpolation=cv2.INTER_NEAREST)
    return cv2.add(image, noise, dtype=cv2.CV_8U)


@register_weather("frost")
def frost(image, frame: Frame, severity, rng, *, reach=(0.25, 0.65), opacity=(0.55, 0.92), haze=(0.03, 0.12)):
    """Frost: an ice layer on the lens or windscreen, thick at the border and thinning toward the centre.

    The ice is a ridged fractal texture (Musgrave's ridged multifractal, ``1 − |2n − 1|``) over an elliptical border
    ramp that reaches ``reach`` of the way in; under it the image is frosted glass (blurred, whitened); a thin lens
    haze (``haze``) veils the whole frame.
    """
    h, w = frame.shape
    qh, qw = (h + 3) // 4, (w + 3) // 4
    r = linear(*reach, severity)
    yy, xx = np.mgrid[0:qh, 0:qw].astype(np.float32)
    radius = np.sqrt(((xx + 0.5) / qw * 2 - 1) ** 2 + ((yy + 0.5) / qh * 2 - 1) ** 2) / math.sqrt(2)
    ramp = np.clip((radius - (1 - r) / 1.2) / max(r, 1e-3), 0, 1) ** 1.5
    ridges = (1.0 - np.abs(2 * smooth_noise((qh, qw), rng, cells=24, octaves=4) - 1)) ** 3
    op = linear(*opacity, severity)
    lens = linear(*haze, severity)
    alpha = np.maximum(np.clip(ramp * (0.35 + 0.65 * ridges) * op, 0, 0.97), lens)
    small = cv2.resize(image, (qw, qh), interpolation=cv2.INTER_AREA)
    ice = cv2.addWeighted(cv2.GaussianBlur(small, (0, 0), 2.0), 0.45, solid((qh, qw), (0.85, 0.9, 0.94)), 0.55, 0)
    return blend(image, full_size(ice, (h, w)), alpha), {"reach": r, "opacity": op, "haze": lens}


# ---------------------------------------------------------------- the stage


def render(
    name: str, image: np.ndarray, frame: Frame, severity: float, rng: np.random.Generator, options: dict | None = None
) -> tuple[np.ndarray, dict]:
    """``image`` under condition ``name`` (``clear``: unchanged) and the parameters drawn for it; ``severity`` in
    [0, 1] (clipped), or one of the effect's levels."""
    if name == CLEAR:
        return image, {}
    eff = WEATHER.get(name)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[:2] != frame.shape:
        raise ValueError(f"weather {name}: expected a {frame.shape} uint8 RGB image, got {image.dtype} {image.shape}")
    out, params = eff.render(image, frame, eff.severity(severity), rng, **(options or {}))
    return out, {k: (round(v, 6) if isinstance(v, float) else v) for k, v in params.items()}


def object_contrast(image: np.ndarray, mask: np.ndarray, boxes: list[tuple[int, int, int, int]], ring: float = 0.3):
    """ΔE (CIE76, Lab) between each object's mean colour and its surround's (a ring ``ring`` of the object's larger
    side around its box, without pasted pixels): how visible the object still is. One value per box."""
    H, W = mask.shape
    out = []
    for x0, y0, x1, y1 in boxes:
        m = round(ring * max(x1 - x0, y1 - y0))
        X0, Y0, X1, Y1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
        crop = cv2.cvtColor(image[Y0:Y1, X0:X1].astype(np.float32) * (1 / 255), cv2.COLOR_RGB2Lab)
        pasted = mask[Y0:Y1, X0:X1] > 0
        inside = np.zeros_like(pasted)
        inside[y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0] = True
        obj, sur = pasted & inside, ~pasted
        if not obj.any() or not sur.any():
            out.append(0.0)
            continue
        out.append(round(float(np.linalg.norm(crop[obj].mean(0) - crop[sur].mean(0))), 3))
    return out


def contact_sheet(tiles: dict[tuple[str, float], np.ndarray], width: int = 360) -> np.ndarray:
    """A grid of ``tiles[(condition, severity)]``: one column per condition, one row per severity, labelled."""
    conds = list(dict.fromkeys(c for c, _ in tiles))
    sevs = sorted({s for _, s in tiles})
    first = next(iter(tiles.values()))
    th = round(first.shape[0] * width / first.shape[1])
    head = 22
    sheet = np.full((len(sevs) * (th + head), len(conds) * width, 3), 255, np.uint8)
    for (c, s), img in tiles.items():
        i, j = sevs.index(s), conds.index(c)
        y, x = i * (th + head), j * width
        sheet[y + head : y + head + th, x : x + width] = cv2.resize(img, (width, th), interpolation=cv2.INTER_AREA)
        text = c if c == CLEAR else f"{c}  severity {s}" if isinstance(s, int) else f"{c}  severity {s:.2f}"
        cv2.putText(sheet, text, (x + 6, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet
