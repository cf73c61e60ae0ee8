"""The ``weather-benchmark`` flow: a real benchmark rendered under every condition of the chosen families, written
as a new ``folder`` benchmark (``tasks/eval/weathered.py``). One Prefect task for the whole benchmark (its images
are done in one process, in order; a stopped run resumes where it stopped). Deployment
``weather-benchmark/road-anomaly`` (prefect.yaml)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas import load_weathered_config
from tasks.eval.weathered import weather_benchmark
from tasks.runtime import configure_process

weather_task = task(
    weather_benchmark, name="weather-benchmark", task_run_name="{cfg.source.kind}", cache_policy=NO_CACHE
)


@flow(name="weather-benchmark")
def weather_benchmark_flow(config_path: str = "configs/weather_benchmark.yaml", overrides: dict | None = None) -> dict:
    """Weather the configured benchmark; the manifest, images and contact sheets go under the config's ``out``."""
    configure_process()
    cfg = load_weathered_config(config_path, overrides)
    summary = weather_task(cfg)
    s = summary["seconds"]
    lines = [
        f"{summary['source_images']} images of {cfg.source.root} -> {summary['images']} in {cfg.out}",
        f"labelling {s['label_s']} s, rendering {s['render_s']} s, writing {s['write_s']} s, total {s['total_s']} s",
        f"no ground found in {len(summary['no_ground'])} images (row-only depth)",
    ]
    get_run_logger().info("; ".join(lines))
    create_markdown_artifact(markdown="\n\n".join(lines), key="weathered-benchmark")
    return summary
