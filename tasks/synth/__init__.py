"""Synthesis: scene and object sources, salient masks, placement, harmonization, compositing, shard
writing, versions, the run report and shard validation."""
