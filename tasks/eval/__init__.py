"""Evaluation: benchmark readers, exact streaming metrics, the scoring loop, reports and comparisons."""
