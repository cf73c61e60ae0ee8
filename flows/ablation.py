"""The ``ablation`` flow (``make ablation STUDY=...``, ``anomalyforge ablate``): for each arm of one study, a shard
version made with that arm's synthesis overrides (the ``synth`` flow, one run directory per arm; the arms without
synthesis overrides of every study share one) and the comparison trained and scored on it with the arm's
comparison overrides (the ``compare`` flow: every method, intervals, lr sweep and seeds as configured), then one
table of every arm — each trained method's rows under the arm's label, the difference of each arm to the first per
dataset with its paired interval (``study.csv`` / ``study.png``). Benchmarks only: each arm's held-in split is
made of its own composites, so it is not a common yardstick. Wiring only.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.compare import compare
from flows.synth import synth
from schemas import ConfigError, load_ablation_config, load_compare_config, load_config
from tasks.eval.compare import arm_rows, write_compare
from tasks.runtime import configure_process
from tasks.versions import resolve_version


def study_arms(config_path: str, study: str, compare_overrides: dict | None = None) -> dict:
    """The arms of ``study`` in the ablation config, each arm's synthesis and comparison configs validated first
    (a typo in the last arm fails now, not after the first arm has trained); ``compare_overrides`` apply to every
    arm's comparison, under the arm's own."""
    cfg = load_ablation_config(config_path)
    if study not in cfg.studies:
        raise ConfigError(f"{config_path}: no study {study!r}; the studies are {', '.join(cfg.studies)}")
    for arm in cfg.studies[study].values():
        load_config(cfg.synth_config, dict(arm.synth))
        load_compare_config(cfg.compare_config, (compare_overrides or {}) | dict(arm.compare))
    return cfg.studies[study]


@flow(name="ablation")
def ablation(
    config_path: str = "configs/ablations.yaml",
    study: str = "harmonization",
    out_dir: str | None = None,
    resume: bool = True,
    compare_overrides: dict | None = None,
) -> dict:
    """``out_dir`` (default ``<run_dir>/<study>/compare``): ``compare.md|csv|json|png`` and ``study.csv|png`` of all
    arms; each arm's own comparison and models under ``<out_dir>/<label>``, but the default arm's (no override) under
    ``<run_dir>/default/compare``: its shards and trained heads are made once for all studies.
    ``compare_overrides``: for every arm's comparison (e.g. ``{methods: [sleeg]}``)."""
    configure_process()
    log = get_run_logger()
    cfg = load_ablation_config(config_path)
    arms = study_arms(config_path, study, compare_overrides)
    out = Path(out_dir or cfg.run_dir / study / "compare")
    rows, per_seed, versions, sweeps, details, resampled = [], [], {}, {}, {}, {}
    for k, (label, arm) in enumerate(arms.items()):
        run_dir = cfg.arm_run_dir(study, label)
        log.info("arm %s (%d/%d): synth into %s", label, k + 1, len(arms), run_dir)
        synth(str(cfg.synth_config), str(run_dir), dict(arm.synth))
        versions[label] = resolve_version(str(run_dir))
        over = (compare_overrides or {}) | dict(arm.compare) | {"held_in": False} | ({} if k == 0 else {"post_hoc": {}})
        res = compare(
            str(cfg.compare_config), versions[label], str(cfg.arm_compare_dir(study, label, out)), over, resume
        )
        rows += arm_rows(label, res["rows"], k == 0)
        # each trained model's bootstrap resamples under the arm's label: the arms' differences get paired intervals
        resampled |= {(m, label, ds): r for (m, train, ds), r in res["resampled"].items() if train != "–"}
        per_seed += arm_rows(label, res["details"]["per_seed_rows"], k == 0)
        sweeps |= {f"{label}/{name.split('/')[-1]}": s for name, s in res["details"]["lr_sweep"].items()}
        details = details or res["details"]
    for table in (rows, per_seed):  # every arm's trained rows, then the post-hoc ones (stable: arm order kept)
        table.sort(key=lambda r: r["kind"] != "trained")
    details = details | {"name": f"{cfg.name}: {study}", "shards": versions, "per_seed_rows": per_seed}
    details |= {"lr_sweep": sweeps, "study": study, "arms": {label: arm.model_dump() for label, arm in arms.items()}}
    files, study_rows = write_compare(rows, details, out, resampled)
    log.info("ablation %s: %s (differences: %s)", study, files["table"], files.get("study", "–"))
    return {k: str(v) for k, v in files.items()} | {"rows": rows, "study_rows": study_rows, "out_dir": str(out)}
