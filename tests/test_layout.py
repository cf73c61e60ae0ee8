"""One class knows every path of a run directory, local or on object storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.layout import RunLayout, default_work_dir


def test_a_local_run_keeps_everything_in_itself(tmp_path):
    run = RunLayout.of(tmp_path / "run")
    assert run.work == tmp_path / "run"
    assert Path(run.latest) == tmp_path / "run" / "LATEST" and Path(run.latest_link) == tmp_path / "run" / "shards"
    assert (run.scenes, run.objects, run.generated) == tuple(
        tmp_path / "run" / d for d in ("scenes", "objects", "generated")
    )
    assert run.staging("v0001-00000000") == tmp_path / "run" / "staging" / "v0001-00000000"
    assert (
        run.compare() == tmp_path / "run" / "compare" and run.compare_models == tmp_path / "run" / "compare" / "models"
    )
    assert run.compare(["night", "fog"]) == tmp_path / "run" / "compare-vs-night-fog"
    assert run.train("eel", "v0002-aa") == tmp_path / "run" / "train" / "eel-v0002-aa"


def test_a_remote_run_keeps_its_local_parts_in_a_work_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("ANOMALYFORGE_CACHE", str(tmp_path / "cache"))
    run = RunLayout.of("s3://bucket/runs/a")
    assert run.latest == "s3://bucket/runs/a/LATEST"
    assert run.work == default_work_dir("s3://bucket/runs/a") and run.work.parent == tmp_path / "cache" / "runs"
    assert run.objects == run.work / "objects"
    assert default_work_dir("s3://a/b_c") != default_work_dir("s3://a_b/c")  # same readable name, another hash
    assert RunLayout.of("s3://bucket/runs/a", tmp_path / "w").scenes == tmp_path / "w" / "scenes"


def test_the_run_of_a_version_versioned_first_then_a_plain_shard_directory(tmp_path):
    version = tmp_path / "run" / "versions" / "v0001-00000000"
    runs = RunLayout.candidates_for_version(version)
    assert [r.work for r in runs] == [tmp_path / "run", tmp_path / "run" / "versions"]
    assert RunLayout.of_version(version).compare_models == tmp_path / "run" / "compare" / "models"
    with pytest.raises(ValueError, match="s3://b/r/versions/v1: the run of a remote version cannot be guessed"):
        RunLayout.candidates_for_version("s3://b/r/versions/v1")
