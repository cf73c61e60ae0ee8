"""Training anomaly methods over a frozen segmenter: the trainer, the shard data stream, checkpoints."""
