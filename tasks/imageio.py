"""Image decoding/encoding with errors that name the file, and atomic file writes."""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from schemas import ConfigError


class BadInputError(ValueError):
    """Input that cannot be used; the message names the item and the problem. ``reason`` is the short
    quarantine reason when it is more specific than the stage's default."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    img = _read(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_rgba(path: str | Path) -> np.ndarray:
    """HxWx4 uint8 RGBA (alpha 255 where the file has none)."""
    img = _read(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.dtype != np.uint8:
        raise BadInputError(f"{path}: expected 8-bit image, got {img.dtype}")
    if img.shape[2] == 3:
        return np.dstack([cv2.cvtColor(img, cv2.COLOR_BGR2RGB), np.full(img.shape[:2], 255, np.uint8)])
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)


def read_gray(path: str | Path) -> np.ndarray:
    """HxW uint8 single channel (label and mask images); a palette PNG gives its indices (Mapillary labels)."""
    img = _read(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3 and Path(path).suffix.lower() == ".png":
        img = _palette_indices(path, img)
    if img.ndim != 2:
        raise BadInputError(f"{path}: expected a single-channel label image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise BadInputError(f"{path}: expected uint8 label image, got {img.dtype}")
    return img


def _palette_indices(path: str | Path, decoded: np.ndarray) -> np.ndarray:
    """The indices of a palette PNG (OpenCV expands the palette to colours; Pillow keeps the indices)."""
    with Image.open(path) as im:
        return np.asarray(im) if im.mode == "P" else decoded


def image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) from the file's header, without decoding it, as ``read_rgb`` gives it (EXIF rotation applied)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)  # orientation: rotated 90°
    except (OSError, UnidentifiedImageError) as e:
        raise BadInputError(f"{path}: cannot read the image size ({e})") from None


def read_gray16(path: str | Path) -> np.ndarray:
    """HxW integer image (Cityscapes instanceIds are 16/32 bit)."""
    img = _read(path, cv2.IMREAD_UNCHANGED)
    if img.ndim != 2:
        raise BadInputError(f"{path}: expected a single-channel image, got shape {img.shape}")
    return img.astype(np.int32)


#: the most pixels an input image may have (``ANOMALYFORGE_MAX_IMAGE_PIXELS``): 100 MP takes 8K video (33 MP) and
#: large photos; a 20000x20000 PNG of 1 MB (a decompression bomb) is refused before it is decoded
DEFAULT_MAX_PIXELS = 100_000_000


def max_image_pixels() -> int:
    value = os.environ.get("ANOMALYFORGE_MAX_IMAGE_PIXELS", "")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        n = int(float(value))  # 1e8 and 100000000 alike
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"ANOMALYFORGE_MAX_IMAGE_PIXELS={value!r} is not a positive number of pixels")
    return n


def check_pixels(path: str | Path, data: bytes) -> None:
    """Refuse an image whose header says it has more than ``max_image_pixels()`` pixels, before decoding it
    (``BadInputError`` with reason ``image_too_large``). A format Pillow cannot parse is left to the decoder."""
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:  # Pillow's own refusal (over 2 x 89 MP): its message has the size
        m = re.search(r"\((\d+) pixels\)", str(e))
        w, h = (int(m.group(1)) if m else limit + 1), 1
        size = f"{w / 1e6:.0f} MP"
    except (OSError, UnidentifiedImageError, ValueError):
        return
    else:
        size = f"{w}x{h} pixels ({w * h / 1e6:.0f} MP)"
    if w * h > limit:
        raise BadInputError(
            f"{path}: {size} is over the limit of {limit / 1e6:.0f} MP (ANOMALYFORGE_MAX_IMAGE_PIXELS); not decoded",
            reason="image_too_large",
        )


def _read(path: str | Path, flags: int) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found") from None
    except OSError as e:
        raise BadInputError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise BadInputError(f"{path}: empty file")
    check_pixels(path, data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise BadInputError(f"{path}: not a decodable image (corrupt or unsupported format)")
    return img


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadInputError(f"{name}: not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_rgba(data: bytes, name: str = "<bytes>") -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4:
        raise BadInputError(f"{name}: not a decodable RGBA image")
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)


def decode_gray(data: bytes, name: str = "<bytes>") -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadInputError(f"{name}: not a decodable image")
    if img.ndim != 2:
        raise BadInputError(f"{name}: expected a single-channel image, got shape {img.shape}")
    return img


def encode_rgb(img: np.ndarray, fmt: str = "jpg", jpeg_quality: int = 95) -> bytes:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"unknown image format {fmt!r} (jpg or png)")
    if not ok:
        raise RuntimeError(f"{fmt} encoding failed")
    return buf.tobytes()


def encode_rgba_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("png encoding failed")
    return buf.tobytes()


def encode_gray_png(img: np.ndarray) -> bytes:
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"labels/masks are HxW uint8, got {img.dtype} {img.shape}")
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("png encoding failed")
    return buf.tobytes()


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    Any error removes the temporary file (only a hard kill can leave a hidden ``.name.*.partial`` file), and never
    leaves a file under the final name. A write that fails for where it goes (a file in the way, no permission, a
    read-only file system, a full disk) is a one-line ``tasks.storage.RunDirError`` naming ``final``.
    """
    final = Path(final)
    tmp_path: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        tmp_path = Path(tmp)
        os.close(fd)
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600
        os.replace(tmp_path, final)
    except OSError as e:
        from tasks.storage import write_error  # tasks.storage imports this module

        err = write_error(final, e)
        if err is None:
            raise
        raise err from e
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_rgb(path: str | Path, img: np.ndarray) -> None:
    fmt = Path(path).suffix.lstrip(".").lower()
    write_bytes_atomic(path, encode_rgb(img, "jpg" if fmt in ("jpg", "jpeg") else "png"))


def write_gray(path: str | Path, img: np.ndarray) -> None:
    if img.dtype == np.uint8:
        write_bytes_atomic(path, encode_gray_png(img))
    else:
        ok, buf = cv2.imencode(".png", img.astype(np.uint16))
        if not ok:
            raise RuntimeError(f"{path}: png encoding failed")
        write_bytes_atomic(path, buf.tobytes())
