"""Salient-object masks with rembg (U²-Net family) and the mask-quality gate.

The model file is never downloaded at run time: ``make install`` puts u2netp into the model home
(``.cache/models`` by default, rembg's ``U2NET_HOME``), and a missing file is a clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from schemas import MaskGateConfig

DEFAULT_MODEL_HOME = Path(".cache/models")


def resolve_model_home(model_home: str | Path | None) -> Path:
    if model_home is not None:
        return Path(model_home)
    env = os.environ.get("U2NET_HOME")
    return Path(env) if env else DEFAULT_MODEL_HOME


def model_file(model: str, model_home: str | Path | None) -> Path:
    """Where rembg looks for ``model`` (flat ``<home>/<name>.onnx`` or ``<home>/models/<name>/<name>.onnx``)."""
    home = resolve_model_home(model_home)
    for cand in (home / f"{model}.onnx", home / "models" / model / f"{model}.onnx"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"rembg model {model!r} not found in {home} (looked for {model}.onnx). Weights are never downloaded "
        f"at run time: run `make install` (or `anomalyforge fetch-weights --model-home {home}`), or set "
        f"saliency.model_home / U2NET_HOME to a folder that has {model}.onnx."
    )


class SalientMasker:
    """Soft salient-object mask in [0, 1] for an RGB image, from a rembg session."""

    def __init__(self, model: str = "u2netp", model_home: str | Path | None = None, threads: int = 1):
        path = model_file(model, model_home)
        os.environ["U2NET_HOME"] = str(path.parent.resolve())  # rembg resolves its model through this
        # imported here, not at the top: rembg reads U2NET_HOME when it is imported
        import onnxruntime as ort
        from rembg import new_session

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.model = model
        self._session = new_session(model, sess_opts=opts, providers=["CPUExecutionProvider"])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        (mask,) = self._session.predict(Image.fromarray(rgb))[:1]
        return np.asarray(mask, dtype=np.float32) / 255.0


class LazyMasker:
    """A SalientMasker created on first use: a bank whose photos all come with masks never loads a model."""

    def __init__(self, model: str = "u2netp", model_home: str | Path | None = None):
        self.model, self.model_home = model, model_home
        self._masker: SalientMasker | None = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self._masker is None:
            self._masker = SalientMasker(self.model, self.model_home)
        return self._masker(rgb)


def mask_quality(rgb: np.ndarray, soft: np.ndarray) -> dict[str, float]:
    """Figures the gate decides on, all recorded with the object.

    ``confidence``: share of soft-mask pixels in the (padded) object box that are decisive (< .1 or > .9).
    ``contrast``: CIE ΔE76 between the mean Lab colour of the object and of a ring around it.
    """
    binary = soft >= 0.5
    h, w = binary.shape
    pixels = int(binary.sum())
    fig: dict[str, float] = {"pixels": float(pixels), "area_frac": pixels / float(h * w)}
    if pixels == 0:
        return fig | {"components": 0.0, "largest_frac": 0.0, "border_frac": 0.0, "confidence": 0.0, "contrast": 0.0}
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    fig["components"] = float((areas >= 0.01 * pixels).sum())
    fig["largest_frac"] = float(areas.max()) / pixels
    border = np.concatenate([binary[0], binary[-1], binary[1:-1, 0], binary[1:-1, -1]])
    fig["border_frac"] = float(border.mean())
    ys, xs = np.nonzero(binary)
    py, px = max(2, (ys.max() - ys.min()) // 10), max(2, (xs.max() - xs.min()) // 10)
    box = soft[max(0, ys.min() - py) : ys.max() + py + 1, max(0, xs.min() - px) : xs.max() + px + 1]
    fig["confidence"] = float(((box < 0.1) | (box > 0.9)).mean())
    k = max(3, int(round(0.05 * max(h, w))) | 1)
    ring = cv2.dilate(binary.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool) & ~binary
    if ring.any():
        lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        fig["contrast"] = float(np.linalg.norm(lab[binary].mean(0) - lab[ring].mean(0)))
    else:
        fig["contrast"] = 0.0
    return fig


def gate_mask(fig: dict[str, float], cfg: MaskGateConfig) -> tuple[str, str] | None:
    """``None`` if the mask passes, else ``(reason, detail)`` for the first failed test."""
    if fig["pixels"] == 0:
        return "empty_mask", "no pixel above 0.5"
    if fig["pixels"] < cfg.min_pixels or fig["area_frac"] < cfg.min_area_frac:
        return "tiny_mask", f"{int(fig['pixels'])} px, {fig['area_frac']:.3f} of the image"
    if fig["components"] > cfg.max_components or fig["largest_frac"] < cfg.min_largest_frac:
        return "fragmented_mask", f"{int(fig['components'])} components, largest {fig['largest_frac']:.2f}"
    if fig["border_frac"] > cfg.max_border_frac:
        return "touches_border", f"covers {fig['border_frac']:.2f} of the image border"
    if fig["confidence"] < cfg.min_confidence:
        return "low_contrast", f"soft mask undecided: confidence {fig['confidence']:.2f} < {cfg.min_confidence}"
    if fig["contrast"] < cfg.min_contrast:
        return "low_contrast", f"object/surround ΔE {fig['contrast']:.1f} < {cfg.min_contrast}"
    return None
