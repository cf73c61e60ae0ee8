"""Torch modules, losses and anomaly scores (no file I/O). Filled by the training and evaluation work."""
