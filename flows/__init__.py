"""Prefect flows: wiring only. The work lives in ``tasks``."""
