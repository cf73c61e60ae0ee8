"""The ImageNet-C corruptions as a second family of conditions (``corruption``), next to the physically modelled
weather of ``tasks.weather``.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019;
on Cityscapes as in Michaelis et al., "Benchmarking Robustness in Object Detection: Autonomous Driving when Winter
is Coming", 2019 (Cityscapes-C). The corruptions are rendered by ``imagecorruptions`` (the maintained
``imagecorruptions-imaug`` release of Michaelis et al.'s package, Apache-2.0), never re-implemented here: its 15
benchmark corruptions (noise, blur, weather, digital) and 4 held-out ones, each at the published severities 1-5.

Each is registered in ``WEATHER`` as ``c_<standard name>`` (``c_gaussian_noise``, ``c_fog``, …): the prefix keeps
ImageNet-C's fog, frost and snow apart from the physical ones; each rendering's parameters record the published
name (``corruption``).
They ignore the scene's layout (as published: a corruption is the same on any image). ``imagecorruptions`` draws
from NumPy's global generator; each call seeds it from the sample's ``rng`` and restores it afterwards, under a lock,
so a weathered image depends only on its seed.
"""

from __future__ import annotations

import threading

import numpy as np

from tasks.weather import Frame, register_weather

CORRUPTION_FAMILY = "corruption"
PREFIX = "c_"
LEVELS = (1, 2, 3, 4, 5)
#: the 15 benchmark corruptions in ImageNet-C's order, then the 4 held-out ("validation") ones
BENCHMARK = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
MIN_SIDE = 32  # imagecorruptions' smallest image

_global_rng = threading.Lock()


def _corruption(name: str):
    def render(image: np.ndarray, frame: Frame, severity: int, rng: np.random.Generator):
        try:
            from imagecorruptions import corrupt
        except ImportError as e:  # installed by make install (pip install --no-deps imagecorruptions-imaug)
            raise RuntimeError(
                f"corruption {name} needs the imagecorruptions package: pip install --no-deps imagecorruptions-imaug"
            ) from e
        h, w = image.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise ValueError(f"corruption {name}: the image is {w}x{h}, ImageNet-C needs at least {MIN_SIDE} px a side")
        seed = int(rng.integers(2**32))
        with _global_rng:
            state = np.random.get_state()
            np.random.seed(seed)
            try:
                out = corrupt(image, severity=int(severity), corruption_name=name)
            finally:
                np.random.set_state(state)
        return np.ascontiguousarray(out, np.uint8), {"corruption": name, "seed": seed}

    render.__name__ = render.__qualname__ = f"corruption_{name}"
    render.__doc__ = f"ImageNet-C {name} (Hendrycks & Dietterich, ICLR 2019) by imagecorruptions, severity 1-5."
    return render


for _name in BENCHMARK + HELD_OUT:
    register_weather(PREFIX + _name, family=CORRUPTION_FAMILY, levels=LEVELS)(_corruption(_name))
