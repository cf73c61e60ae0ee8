"""Compositing, Eq. 1 of the DiffEEL paper:

    x = Pad(1 − m) ⊙ x_in + Pad(m ⊙ x_obj),        y = Pad(1 − m) ⊙ y_in + Pad(m) · P,   P = 254

``m`` is the binary object mask placed at its box (Pad). The image uses the feathered alpha α ≤ m, so
pixels outside ``m`` are exactly the scene's; the label uses ``m`` itself. Only the boxes are touched.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.labels import ANOMALY


def resize_object(rgba: np.ndarray, width: int, height: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Object RGBA -> (rgb hxwx3 uint8, binary mask hxw bool) at the placed size."""
    interp = cv2.INTER_AREA if height < rgba.shape[0] else cv2.INTER_LINEAR
    rgb = cv2.resize(np.ascontiguousarray(rgba[..., :3]), (width, height), interpolation=interp)
    mask = cv2.resize(rgba[..., 3], (width, height), interpolation=cv2.INTER_LINEAR) >= 128
    if flip:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(mask)


def paste(
    image: np.ndarray,
    label: np.ndarray,
    anomaly_mask: np.ndarray,
    obj_rgb: np.ndarray,
    alpha: np.ndarray,
    mask: np.ndarray,
    box: tuple[int, int, int, int],
) -> None:
    """Paste one object in place (image, label and the sample's anomaly mask are modified)."""
    x0, y0, x1, y1 = box
    roi = image[y0:y1, x0:x1]
    a = alpha[..., None]
    blended = roi.astype(np.float32) * (1.0 - a) + obj_rgb.astype(np.float32) * a
    np.copyto(roi, (blended + 0.5).astype(np.uint8), where=mask[..., None])
    label[y0:y1, x0:x1][mask] = ANOMALY
    anomaly_mask[y0:y1, x0:x1][mask] = 255
