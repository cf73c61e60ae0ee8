"""The ``evaluate`` flow: a model (method checkpoint, frozen segmenter + post-hoc score, or TorchScript) over
benchmarks -> metrics.json, table, curves, panels. One Prefect task per dataset (every score of the model in that
one pass); the table is also published as
a Prefect table artifact. Deployment ``evaluate/benchmarks`` (prefect.yaml).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas import load_eval_config
from tasks.eval.evaluate import EvaluationError, evaluate_dataset_or_error, load_eval_model
from tasks.eval.report import markdown_table, table_rows, write_eval_report
from tasks.runtime import configure_process

evaluate_dataset_task = task(
    evaluate_dataset_or_error, name="evaluate-dataset", task_run_name="{spec.kind}", cache_policy=NO_CACHE
)
report_task = task(write_eval_report, name="write-eval-report", cache_policy=NO_CACHE)


@flow(name="evaluate")
def evaluate(config_path: str = "configs/eval.yaml", out_dir: str = "runs/eval", overrides: dict | None = None) -> dict:
    """Evaluate the configured model on every configured dataset; outputs go under ``out_dir``."""
    configure_process()  # a deployment's worker starts the program here
    cfg = load_eval_config(config_path, overrides)
    log = get_run_logger()
    model = load_eval_model(cfg)
    log.info("model %s: %s, score %s", cfg.model, model.kind, model.score)
    settings = cfg.model_dump(mode="json") | {"model_kind": model.kind, "score": model.score} | model.details
    settings["smoothing"] = model.smoothing
    results = []
    for spec in cfg.datasets:  # the report is rewritten after each dataset: finished results are never lost
        results += (done := evaluate_dataset_task(model, spec, cfg))  # every score from one pass
        for r in done:
            if "error" in r:
                log.error("%s: %s", r["name"], r["error"])
        files = report_task(results, out_dir, settings)
    rows = table_rows(results)
    create_table_artifact(table=rows, key="anomaly-metrics", description=f"{model.score} on {len(rows)} rows; %")
    create_markdown_artifact(markdown=markdown_table(rows), key="anomaly-metrics-md")
    log.info("metrics in %s, report %s", files["metrics"], files["report"])
    failed = [r for r in results if "error" in r]
    if failed:
        raise EvaluationError(
            f"{len(failed)} of {len(results)} datasets could not be evaluated (the others are in {files['metrics']}): "
            + "; ".join(f"{r['name']}: {r['error']}" for r in failed)
        )
    return {k: str(v) for k, v in files.items()} | {"rows": rows, "model_kind": model.kind, "score": model.score}


def run_evaluate(config_path: str, out_dir: str, overrides: dict | None = None) -> dict:
    return evaluate(config_path, str(Path(out_dir)), overrides)
