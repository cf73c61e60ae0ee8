"""Dataset manifests: layouts of the datasets we read, the demo object list, and the parquet schemas
of the shard manifests we write."""

from pathlib import Path

MANIFEST_DIR = Path(__file__).parent
