"""The one registry shape: register / get / names / config, one error for unknown names, entry-point plug-ins."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from schemas.registries import ALL, METHODS, OBJECT_SOURCES, SCORES
from schemas.registry import PluginError, Registry, UnknownNameError
from tests import helpers
from tests.helpers import ROOT, write_plugin_dist


class WidgetConfig(BaseModel):
    name: str = "round"
    size: int = 3


def test_register_get_names_and_config_in_registration_order():
    reg = Registry("widget", "af_test.none")
    reg.register("square", "S")

    @reg.register("round", config=WidgetConfig)
    def round_widget():
        return "R"

    assert reg.names() == ["square", "round"] and reg.get("round") is round_widget
    assert reg.config("round") is WidgetConfig and reg.config("square") is None
    assert "round" in reg and "oval" not in reg and list(reg) == ["square", "round"] and len(reg) == 2
    assert reg.check_name("square") == "square"
    reg.unregister("square")
    assert reg.names() == ["round"]


def test_an_unknown_name_lists_the_registered_ones_and_suggests_the_closest():
    reg = Registry("widget", "af_test.none")
    for name in ("round", "square", "triangle"):
        reg.register(name, name.upper())
    with pytest.raises(UnknownNameError) as e:
        reg.get("sqare")
    assert str(e.value) == "unknown widget 'sqare' (did you mean 'square'?); registered: round, square, triangle"
    with pytest.raises(ValueError, match=r"^unknown widget 'zz'; registered: round, square, triangle$"):
        reg.config("zz")  # a ValueError (pydantic reports it as a field error) and a LookupError
    assert isinstance(e.value, LookupError)


def test_a_taken_name_is_refused_unless_it_is_the_same_entry():
    reg = Registry("widget", "af_test.none")

    def a():
        pass

    def b():
        pass

    reg.register("w", a)
    reg.register("w", a)  # the same module imported twice
    with pytest.raises(ValueError, match=r"widget 'w' is registered twice \(.*\.a and .*\.b\)"):
        reg.register("w", b)


def test_the_config_check_of_a_registry_runs_at_registration():
    with pytest.raises(ValueError, match="must default name to 'eel2', not 'eel'"):
        METHODS.register("eel2", object(), config=METHODS.config("eel"))
    assert "eel2" not in METHODS


def test_every_extension_point_is_a_registry_with_entries_and_a_group():
    assert set(ALL) == {
        "methods", "segmenters", "scores", "scene_sources", "object_sources", "weather", "harmonizers",
        "schedulers", "benchmarks", "label_encodings", "optimizers", "extra_data",
    }  # fmt: skip
    for name, reg in ALL.items():
        assert isinstance(reg, Registry) and reg.group == f"anomalyforge.{name}" and reg.names(), name
    assert OBJECT_SOURCES.names() == ["files", "demo", "coco", "diffusion", "patches"]  # extraction order


def test_entry_points_fill_a_registry_on_first_lookup_and_in_package_order(tmp_path, monkeypatch):
    for dist, mod in (("zeta-widgets", "zeta_widgets"), ("alpha-widgets", "alpha_widgets")):
        write_plugin_dist(
            tmp_path,
            dist,
            {"af_test.widgets": {mod: mod}},
            {f"{mod}.py": f"from tests import helpers\nhelpers.registry_under_test.register('{mod}', '{dist}')\n"},
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", "af_test.widgets")
    monkeypatch.setattr(helpers, "registry_under_test", reg)
    reg.register("built_in", "B")  # registered on import, before any lookup
    assert reg.names() == ["built_in", "alpha_widgets", "zeta_widgets"]  # other distributions by name
    assert reg.get("zeta_widgets") == "zeta-widgets"


def test_a_plugin_that_fails_to_import_is_named_and_fails_every_lookup(tmp_path, monkeypatch):
    write_plugin_dist(tmp_path, "broken-widgets", {"af_test.broken": {"broken": "broken_widgets"}}, {
        "broken_widgets.py": "raise RuntimeError('no licence file')\n"
    })  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", "af_test.broken")
    for _ in range(2):
        with pytest.raises(PluginError, match=r"widget plug-in 'broken' \(broken_widgets, from broken-widgets\) "):
            reg.names()


def test_configs_take_their_valid_names_from_the_registries():
    from schemas import EvalConfig, HarmonizeConfig

    SCORES.register("test_only_score", lambda logits: -logits.amax(1))
    try:
        assert EvalConfig(model="m.pt", datasets=[{"kind": "folder", "root": "x"}], score="test_only_score")
    finally:
        SCORES.unregister("test_only_score")
    with pytest.raises(ValueError, match=r"unknown harmonizer 'lap' \(did you mean 'lab'\?\)"):
        HarmonizeConfig(method="lap")


def test_no_code_compares_anything_with_a_registered_name():
    """What an entry does is asked of the entry (its spec, its config class), never decided by ``== "<name>"``
    elsewhere: a plug-in would otherwise be second class."""
    names = {n for reg in ALL.values() for n in reg.names()}
    compare = re.compile(r"""(?:==|!=|\bin\b)\s*\(?\s*['"]([\w.\-]+)['"]|['"]([\w.\-]+)['"]\s*(?:==|!=)""")
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for d in ("flows", "tasks", "models")
        for p in sorted((ROOT / d).rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        for m in compare.finditer(line)
        if (m.group(1) or m.group(2)) in names
    ]
    assert hits == []


def test_cli_list_prints_one_registry_or_all_and_names_an_unknown_kind():
    from typer.testing import CliRunner

    from flows.cli import app

    one = CliRunner().invoke(app, ["list", "weather"])
    assert one.exit_code == 0 and one.output.splitlines()[0] == "weather (anomalyforge.weather):"
    names = [line.split()[0] for line in one.output.splitlines()[1:]]
    assert names[:6] == ["fog", "sandstorm", "rain", "snow", "night", "frost"]  # the physical family, then ImageNet-C
    assert names[6:8] == ["c_gaussian_noise", "c_shot_noise"] and len(names) == 6 + 19
    every = CliRunner().invoke(app, ["list"]).output
    assert all(f"{kind} ({reg.group}):" in every for kind, reg in ALL.items())
    assert "  demo                     tasks.scenes.demo  [DemoSourceConfig]" in every
    bad = CliRunner().invoke(app, ["list", "scene_source"])
    assert bad.exit_code == 2 and "unknown registry 'scene_source' (did you mean 'scene_sources'?)" in bad.output
