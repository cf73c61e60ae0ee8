"""The ``compare`` flow (``make compare``): train every registered method on one shard version over the frozen
segmenter of the kind it needs (per-pixel or mask-classification; same seeds, same step budget; with ``lr_sweep``,
each at the lr multiple its short held-in sweep picks), evaluate each and every frozen segmenter's post-hoc scores
on the held-in split and the configured benchmarks, with 95 % bootstrap intervals, and write one table (mean ± std
over ``seeds``; rows no different from a post-hoc score flagged). Given several shard versions (with and without
weather, say), every method is trained on each and the table adds the per-condition difference to the first. Wiring only;
one Prefect task per training and per evaluated model (a frozen segmenter's post-hoc scores are one model: one
forward per image for all of them). Trained models are reused when their config and shards are
unchanged.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from models.methods import get_method, method_config, method_names
from schemas import BenchmarkConfig, EvalConfig, load_compare_config
from tasks.eval.benchmarks import check_benchmarks
from tasks.eval.compare import aggregate_seeds, compare_rows, flag_untrained, markdown, write_compare
from tasks.eval.evaluate import EvaluationError, evaluate_model
from tasks.layout import RunLayout
from tasks.runtime import configure_process
from tasks.storage import is_url
from tasks.train.pretrain import segmenter_checkpoint
from tasks.train.sweep import beyond_edge, pick_multiplier, sweep_record, sweep_steps, swept
from tasks.train.trainer import train_method
from tasks.versions import resolve_version

segmenter_task = task(segmenter_checkpoint, name="frozen-segmenter", cache_policy=NO_CACHE)
train_task = task(train_method, name="train-method", task_run_name="{cfg.method.name}", cache_policy=NO_CACHE)
evaluate_task = task(evaluate_model, name="evaluate-model", task_run_name="{cfg.model.name}", cache_policy=NO_CACHE)


def shard_labels(shards: list[str]) -> dict[str, str]:
    """``{label: resolved version}``: the label is the run directory's name (``runs/demo-weather`` →
    ``demo-weather``) or the version's, made unique with a suffix."""
    out: dict[str, str] = {}
    for s in shards:
        version = resolve_version(s)
        name = Path(str(s).rstrip("/")).name or Path(version).name
        label, k = name, 2
        while label in out:
            label, k = f"{name}-{k}", k + 1
        out[label] = version
    return out


def models_dir(label: str, version: str, out: Path | None, versions: int) -> Path:
    """Where the models trained on ``version`` live: under an explicit ``out`` (``models/``, or ``models/<label>/``
    when several versions are compared), else in the version's own run directory (``<run_dir>/compare/models``),
    so ``make compare`` on each version and the study between them reuse the same trained models."""
    if out is not None:
        return out / "models" if versions == 1 else out / "models" / label
    return RunLayout.of_version(version).compare_models


@flow(name="compare")
def compare(
    config_path: str = "configs/compare.yaml",
    shards: str | list[str] = "runs/demo",
    out_dir: str | None = None,
    overrides: dict | None = None,
    resume: bool = True,
) -> dict:
    """``shards``: a version dir, a run dir (its latest version) or an fsspec URL, or a list of them (each method is
    trained on each; the first also gives the held-in split and pre-trains a demo segmenter); outputs under
    ``out_dir`` (default ``<run_dir>/compare``, ``<run_dir>/compare-vs-<other>`` for a list):
    ``compare.md|csv|json|png``, ``conditions.png`` and ``study.csv|png``; trained models where ``models_dir``
    says. The frozen segmenter is shared by every version's models (a demo one is pre-trained on the first)."""
    configure_process()  # a deployment's worker starts the program here
    log = get_run_logger()
    cfg = load_compare_config(config_path, overrides)
    trains = shard_labels([shards] if isinstance(shards, str) else list(shards))
    version = next(iter(trains.values()))
    if out_dir is None and any(is_url(v) for v in trains.values()):
        raise ValueError("out_dir is required for a remote shard version")
    out = Path(out_dir or RunLayout.of_version(version).compare(list(trains)[1:]))
    models = {label: models_dir(label, v, out if out_dir else None, len(trains)) for label, v in trains.items()}
    check_benchmarks(cfg.benchmarks)  # a missing dataset fails now, not after every method has trained
    base = cfg.train.model_copy(update={"max_steps": cfg.max_steps})
    names = cfg.methods or method_names()
    kinds = list(dict.fromkeys(get_method(n).segmenter_kind for n in names))
    # one frozen segmenter per kind the methods need (a demo one is pre-trained on the first version)
    runs = {}
    for kind in kinds:
        run_cfg = base.for_kind(kind)
        ckpt = segmenter_task(run_cfg, version, models[next(iter(trains))] / "segmenter", True, log.info)
        runs[kind] = run_cfg.model_copy(update={"segmenter": run_cfg.segmenter.model_copy(update={"checkpoint": ckpt})})

    datasets = list(cfg.benchmarks)
    if cfg.held_in:
        name = "held-in" if base.val_fraction > 0 else "train"  # val_fraction 0: no held-out split
        held_in = {"name": name, "val_fraction": base.val_fraction, "limit": base.val_limit}
        datasets.insert(0, BenchmarkConfig(kind="shards", root=version, **held_in))
    shared = {"datasets": datasets, "device": cfg.device, "panels": cfg.panels, "batch_size": cfg.batch_size}
    shared |= {"input_width": cfg.input_width, "input_size": cfg.input_size, "bootstrap": cfg.bootstrap}

    rows, trained, sweeps, resampled = [], {}, {}, {}
    seeds = [base.seed + k for k in range(cfg.seeds)]
    for label, train_version in trains.items():
        for name in names:
            run_cfg = runs[get_method(name).segmenter_kind]
            mcfg = method_config({"name": name} | cfg.method_overrides.get(name, {}))
            method_cfg = run_cfg.model_copy(update={"method": mcfg})
            if cfg.lr_sweep:  # short runs at multiples of the lr, scored on the held-in split only
                steps = sweep_steps(cfg.max_steps, cfg.sweep_steps)
                trials = {}
                for mult in [*cfg.lr_sweep, *[None] * cfg.sweep_extend]:
                    if mult is None and (mult := beyond_edge(trials)) is None:
                        break  # the best lies inside the grid: no further run
                    where = models[label] / "lr-sweep" / f"{name}-x{mult:g}"
                    try:
                        trials[mult] = train_task(
                            swept(method_cfg, mult, steps), train_version, where, resume, True, log.info
                        ).metrics
                    except FloatingPointError as e:  # too high an lr: this multiple loses, the sweep goes on
                        log.warning("%s at lr ×%g diverged: %s", name, mult, e)
                        trials[mult] = {"metrics_error": f"diverged: {e}"}
                mult = pick_multiplier(trials)
                sweeps[f"{label}/{name}"] = sweep_record(method_cfg.method.lr, mult, steps, trials)
                method_cfg = swept(method_cfg, mult)
            for seed in seeds:
                seed_cfg = method_cfg.model_copy(update={"seed": seed})
                where = models[label] / (name if seed == base.seed else f"{name}-seed{seed}")
                result = train_task(seed_cfg, train_version, where, resume, True, log.info)
                trained[f"{label}/{where.name}"] = str(result.model)
                evaluated, results = evaluate_task(EvalConfig(model=result.model, **shared))
                entry = {"model": name, "kind": "trained", "score": name, "train": label, "steps": result.steps}
                entry |= {"lr": seed_cfg.method.lr, "seed": seed if cfg.seeds > 1 else None}
                rows += compare_rows(entry | {"segmenter": run_cfg.segmenter.name}, results)
                if seed == base.seed:
                    resampled |= {(name, label, r["name"]): r["resampled"] for r in results if "resampled" in r}
    for kind, run_cfg in runs.items():  # every post-hoc score of a segmenter from one pass per dataset
        seg, scores = run_cfg.segmenter, cfg.post_hoc.get(kind, [])
        if not scores:
            continue
        options = {"segmenter": seg.name, "segmenter_options": seg.options, "score": scores}
        _, results = evaluate_task(EvalConfig(model=seg.checkpoint, **options, **shared))
        for score in scores:
            entry = {"model": f"{seg.name} + {score}", "kind": "post-hoc", "score": score, "train": "–"}
            mine = [r for r in results if r.get("score", score) == score]  # a dataset's error is every score's
            rows += compare_rows(entry | {"segmenter": seg.name}, mine)
            resampled |= {(entry["model"], "–", r["name"]): r["resampled"] for r in mine if "resampled" in r}
    rows = flag_untrained(rows, resampled, cfg.same_as_frozen_margin)
    per_seed = rows
    if cfg.seeds > 1:
        rows = aggregate_seeds(rows)

    details = {
        "name": cfg.name,
        "shards": version,
        "trained_on": trains,
        "segmenters": {
            kind: {"name": r.segmenter.name, "checkpoint": str(r.segmenter.checkpoint)} for kind, r in runs.items()
        },
        "seed": base.seed,
        "seeds": seeds,
        "max_steps": cfg.max_steps,
        "lr_warmup": base.lr_warmup,
        "lr_sweep": sweeps,
        "per_seed_rows": per_seed if cfg.seeds > 1 else [],
        "models": trained,
        "config": cfg.model_dump(mode="json"),
    }
    files, study = write_compare(rows, details, out, resampled)
    create_table_artifact(table=rows, key="compare", description=f"{cfg.name}: methods × datasets on {version}; %")
    create_markdown_artifact(markdown=markdown(rows), key="compare-md")
    log.info("comparison table %s (csv %s, chart %s)", files["table"], files["csv"], files["chart"])
    failed = [r for r in rows if r.get("error")]
    if failed:
        raise EvaluationError(
            f"{len(failed)} evaluations failed (the rest is in {files['table']}): "
            + "; ".join(f"{r['model']} on {r['dataset']}: {r['error']}" for r in failed)
        )
    return (
        {k: str(v) for k, v in files.items()}
        | {"rows": rows, "study_rows": study, "out_dir": str(out)}
        | {"details": details, "resampled": resampled}
    )
