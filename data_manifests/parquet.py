"""Parquet schemas of the manifests anomalyforge writes: one place that defines each column.

- ``OBJECT_SCHEMA``: an object bank's ``objects.parquet`` (one row per object)
- ``SAMPLE_SCHEMA``: a shard set's ``samples.parquet`` (one row per sample)
- ``SHARD_SCHEMA``: a shard set's ``shards.parquet`` (one row per tar shard, with its sha256)
- ``REJECT_SCHEMA``: ``rejects.parquet`` of banks and shard sets (stage, item, reason, detail)
"""

import pyarrow as pa

OBJECT_SCHEMA = pa.schema(
    [
        ("object_id", pa.string()),
        ("source", pa.string()),
        ("class_name", pa.string()),
        ("origin", pa.string()),
        ("prompt", pa.string()),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mask_area", pa.int64()),
        ("quality", pa.string()),  # JSON of the mask-quality figures
        ("height_m", pa.list_(pa.float64(), 2)),  # real-world height range, when the source knows it
        ("shard", pa.string()),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("scene_id", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_objects", pa.int32()),
        ("object_ids", pa.list_(pa.string())),
        ("classes", pa.list_(pa.string())),
        ("sources", pa.list_(pa.string())),
        ("boxes", pa.list_(pa.list_(pa.int32(), 4))),
        ("anomaly_pixels", pa.int64()),
        ("condition", pa.string()),  # tasks.weather.conditions(): clear unless the run has weather
        ("severity", pa.float64()),  # of the weather effect, 0 when clear
        ("visibility", pa.list_(pa.float64())),  # per object: ΔE to its surround after the effect (weather runs)
        ("seed", pa.int64()),
        ("config_hash", pa.string()),
    ]
)
SHARD_SCHEMA = pa.schema(
    [("shard", pa.string()), ("sha256", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64())]
)


REJECT_SCHEMA = pa.schema(
    [("stage", pa.string()), ("item", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
