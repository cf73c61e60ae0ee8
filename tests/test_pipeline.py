"""The composite stage end to end without Prefect: determinism, resume, quarantine, validation."""

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import BaseModel, Field

from schemas import ObjectRecord, SynthConfig
from schemas.registries import OBJECT_SOURCES
from tasks.object_bank import BankObject, read_object_bank
from tasks.sample_format import SHARD_PATTERN
from tasks.shards import read_rejects, read_table
from tasks.synth.object_sources import ObjectSource, register_object_source
from tasks.synth.pipeline import TooFewSamplesError, build_object_bank, prepare_scenes, select_sources
from tasks.synth.validate import validate_shard_set
from tests.helpers import run_stage, shard_bytes, write_object_photos


def test_same_config_and_seed_give_byte_identical_shards(tiny_config, tmp_path):
    a = run_stage(tiny_config, tmp_path / "a")
    b = run_stage(tiny_config, tmp_path / "b")
    assert a["samples"] >= 8 and a["shards"] == 3 and b == a
    assert shard_bytes(tmp_path / "a/shards") == shard_bytes(tmp_path / "b/shards")
    assert read_table(tmp_path / "a/shards/shards.parquet") == read_table(tmp_path / "b/shards/shards.parquet")
    run_stage(tiny_config.model_copy(update={"seed": 4}), tmp_path / "c")
    assert shard_bytes(tmp_path / "a/shards") != shard_bytes(tmp_path / "c/shards")


def test_interrupted_run_leaves_no_partial_shard_and_resume_is_identical(tiny_config, tmp_path):
    ref = tmp_path / "ref"
    run_stage(tiny_config, ref)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_stage(tiny_config, run, fail_at_shard=1)
    # shard 0 is whole, shard 1 was interrupted: no file under its final name, no manifest yet
    assert (run / "shards" / SHARD_PATTERN.format(0)).is_file()
    assert not (run / "shards" / SHARD_PATTERN.format(1)).exists()
    assert not (run / "shards/samples.parquet").exists()
    first = (run / "shards" / SHARD_PATTERN.format(0)).stat().st_mtime_ns
    run_stage(tiny_config, run)
    assert (run / "shards" / SHARD_PATTERN.format(0)).stat().st_mtime_ns == first  # not rewritten
    assert shard_bytes(run / "shards") == shard_bytes(ref / "shards")
    assert validate_shard_set(run / "shards")[1] == []


def test_samples_are_consistent_and_keys_have_no_dots(tiny_config, tmp_path):
    run_stage(tiny_config, tmp_path)
    checked, problems = validate_shard_set(tmp_path / "shards")
    assert problems == [] and checked == len(read_table(tmp_path / "shards/samples.parquet"))
    with tarfile.open(tmp_path / "shards" / SHARD_PATTERN.format(0)) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".meta.json"))).read())
        assert all(m.mtime == 0 for m in tar.getmembers())
    keys = {n.split(".", 1)[0] for n in names}
    assert all("." not in k for k in keys)
    assert {n.split(".", 1)[1] for n in names} == {"image.jpg", "label.png", "mask.png", "meta.json"}
    assert meta["config_hash"] == tiny_config.content_hash() and meta["objects"]
    for o in meta["objects"]:
        assert o["score"] > 0 and o["height_px"] >= tiny_config.placement.min_height_px


def test_bad_scenes_are_quarantined_and_the_run_goes_on(tiny_config, tmp_path):
    scenes, _ = prepare_scenes(tiny_config, tmp_path)
    scenes[0].image.write_bytes(b"not an image")  # corrupt image
    lab = cv2.imread(str(scenes[1].label), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(scenes[1].label), lab[:, : lab.shape[1] // 2])  # label of the wrong size
    tiny_config.min_sample_fraction = 0.2  # two of three scenes are bad: this tests the quarantine, not the gate
    summary = run_stage(tiny_config, tmp_path)
    rejects = read_rejects(tmp_path / "shards/rejects.parquet")
    bad = [r for r in rejects if r.reason == "bad_scene"]
    assert any("not a decodable image" in r.detail for r in bad)
    assert any("label is" in r.detail and "labelIds.png" in r.detail for r in bad)
    assert summary["samples"] > 0 and validate_shard_set(tmp_path / "shards")[1] == []


def test_scene_without_drivable_pixels_is_quarantined(tiny_config, tmp_path):
    scenes, _ = prepare_scenes(tiny_config, tmp_path)
    for s in scenes:
        lab = cv2.imread(str(s.label), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(s.label), np.where(lab == 7, 8, lab).astype(np.uint8))  # road -> sidewalk
    # every sample is quarantined: the run fails, saying why, and leaves no manifest that looks finished
    with pytest.raises(TooFewSamplesError, match=r"0 of 10 samples .*composite/no_placement \(10 of 10\).*no drivable"):
        run_stage(tiny_config, tmp_path)
    assert (
        not (tmp_path / "shards" / "dataset.json").exists() and not (tmp_path / "shards" / "samples.parquet").exists()
    )


def test_validate_catches_tampering(tiny_config, tmp_path):
    run_stage(tiny_config, tmp_path)
    d = tmp_path / "shards"
    shard = d / SHARD_PATTERN.format(0)
    # keep only the first sample, with a label that disagrees with its mask and has a foreign value
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first = members[0][0].name.split(".", 1)[0]
    shard.chmod(0o644)
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if not m.name.startswith(first + "."):
                continue
            if m.name.endswith("label.png"):
                lab = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                lab[lab == 254] = 0
                lab[0, 0] = 77
                data = cv2.imencode(".png", lab)[1].tobytes()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    _, problems = validate_shard_set(d)
    text = "\n".join(problems)
    assert "sha256 differs" in text
    assert "label has values outside" in text and "77" in text
    assert "label == 254 and mask disagree" in text
    assert "listed in samples.parquet but in no shard" in text
    (d / "extra.tar").write_bytes(b"")
    assert any("not listed" in p for p in validate_shard_set(d)[1])


def test_object_bank_round_trip_and_reuse(tiny_config, tmp_path):
    bank_dir = build_object_bank(tiny_config, tmp_path / "bank")
    objs = read_object_bank(bank_dir)
    assert len(objs) == 3 and all(o.record.class_name == "box" for o in objs)
    assert all(o.rgba.shape[2] == 4 and o.mask.sum() == o.record.mask_area for o in objs)
    stamp = (bank_dir / "objects.parquet").stat().st_mtime_ns
    build_object_bank(tiny_config, tmp_path / "bank")  # same config: reused, not rebuilt
    assert (bank_dir / "objects.parquet").stat().st_mtime_ns == stamp
    again = read_object_bank(bank_dir)
    assert all(np.array_equal(a.rgba, b.rgba) and a.record == b.record for a, b in zip(objs, again, strict=True))
    write_object_photos(tiny_config.objects.files[0].root, n=4)  # a new photo in the source folder
    assert len(read_object_bank(build_object_bank(tiny_config, tmp_path / "bank"))) == 4


def test_a_changed_config_never_reuses_old_shards(tiny_config, tmp_path):
    run_stage(tiny_config, tmp_path)
    with pytest.raises(ValueError, match="holds shards of another config"):
        run_stage(tiny_config.model_copy(update={"num_samples": 12}), tmp_path)


def test_bad_object_photos_are_quarantined_with_reasons(tiny_config, tmp_path):
    root = tiny_config.objects.files[0].root
    (root / "broken.png").write_bytes(b"\x89PNG broken")
    cv2.imwrite(str(root / "blank.png"), np.full((40, 40, 3), 128, np.uint8))
    cv2.imwrite(str(root / "blank.mask.png"), np.zeros((40, 40), np.uint8))  # empty mask
    bank_dir = build_object_bank(tiny_config, tmp_path / "bank")
    reasons = {Path(r.item).name: (r.reason, r.detail) for r in read_rejects(bank_dir / "rejects.parquet")}
    assert reasons["broken.png"][0] == "bad_input" and "broken.png: not a decodable image" in reasons["broken.png"][1]
    assert reasons["blank.png"][0] == "empty_mask"
    assert len(read_object_bank(bank_dir)) == 3  # the good ones are all there


def test_sources_switch_registered_object_sources_on_and_off(tiny_config):
    cfg = select_sources(tiny_config, ["demo"])  # the packaged photos need no section
    assert cfg.objects.demo_objects and cfg.objects.files == []
    assert select_sources(tiny_config, ["files"]).objects == tiny_config.objects
    with pytest.raises(ValueError, match=r"object sources \['coco'\] were asked for but the config has no section"):
        select_sources(tiny_config, ["coco"])
    with pytest.raises(ValueError, match=r"unknown object source 'cocoa' \(did you mean 'coco'\?\); registered: files"):
        select_sources(tiny_config, ["cocoa"])


class StripesConfig(BaseModel):
    count: int = Field(2, ge=1)


class Stripes(ObjectSource):
    """A plug-in object source written in a test: ``count`` striped squares."""

    def extract(self, ctx):
        cfg = self.section(ctx.cfg.objects)
        objects = []
        for i in range(cfg.count):
            rgba = np.zeros((40, 40, 4), np.uint8)
            rgba[:, ::4, 0] = 200
            rgba[5:35, 5:35, 3] = 255
            record = ObjectRecord(
                object_id=f"stripes{i}", source="stripes", class_name="box", origin="test", width=40, height=40,
                mask_area=900,
            )  # fmt: skip
            objects.append(BankObject(record, rgba))
        return objects, []


@pytest.fixture
def stripes_source():
    register_object_source("stripes", StripesConfig)(Stripes)
    yield
    OBJECT_SOURCES.unregister("stripes")


def test_a_plugin_object_source_is_configured_under_sources_and_fills_the_bank(stripes_source, tiny_config, tmp_path):
    cfg = SynthConfig.model_validate(
        tiny_config.model_dump()
        | {"objects": tiny_config.objects.model_dump() | {"sources": {"stripes": {"count": 3}}}}
    )
    assert cfg.content_hash() != tiny_config.content_hash()  # a configured plug-in source is part of the identity
    bank = read_object_bank(build_object_bank(cfg, tmp_path / "bank"))
    assert sorted(o.record.source for o in bank) == ["file"] * 3 + ["stripes"] * 3  # registry order: files first
    only = select_sources(cfg, ["stripes"])
    assert only.objects.files == [] and only.objects.sources == {"stripes": {"count": 3}}
    assert select_sources(cfg, ["files"]).objects.sources == {}
    with pytest.raises(ValueError, match=r"object source 'stripes': count: Input should be greater than or equal to 1"):
        SynthConfig.model_validate(tiny_config.model_dump() | {"objects": {"sources": {"stripes": {"count": 0}}}})
    with pytest.raises(ValueError, match=r"unknown object source 'stripe' \(did you mean 'stripes'\?\)"):
        SynthConfig.model_validate(tiny_config.model_dump() | {"objects": {"sources": {"stripe": {}}}})
