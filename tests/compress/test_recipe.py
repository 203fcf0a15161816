"""Recipe validation: every error names the file, the line and the key."""

from __future__ import annotations

import pytest

from edgekit.compress.passes import ExportConfig, QuantizeConfig
from edgekit.compress.recipe import load_recipe, parse_recipe
from edgekit.errors import ConfigError

GOOD = """\
version: 1
model: {factory: "tiny_models:TinyResNet"}
inputs: [{name: image, dtype: float32, shape: [batch, 1, 16, 16]}]
data: {source: images.npz}
passes:
  - export: {}
  - quantize:
      calibration: entropy
"""


def test_good_recipe_parses_into_typed_pass_configs():
    r = parse_recipe(GOOD, "r.yaml")
    assert [type(p) for p in r.passes] == [ExportConfig, QuantizeConfig]
    assert r.passes[1].calibration == "entropy"
    assert r.inputs[0].shape == ["batch", 1, 16, 16]
    assert r.to_json()["passes"][1]["quantize"]["calibration"] == "entropy"


def test_unknown_key_in_a_pass_names_its_line():
    text = GOOD.replace("      calibration: entropy", "      calibration: entropy\n      calibraton_samples: 3")
    with pytest.raises(ConfigError) as e:
        parse_recipe(text, "r.yaml")
    assert str(e.value).startswith("r.yaml:9: passes[1].quantize.calibraton_samples: unknown key")


def test_bad_value_names_its_line_and_the_allowed_values():
    with pytest.raises(ConfigError) as e:
        parse_recipe(GOOD.replace("calibration: entropy", "calibration: median"), "r.yaml")
    msg = str(e.value)
    assert msg.startswith("r.yaml:8: passes[1].quantize.calibration:")
    assert "'minmax'" in msg and "'entropy'" in msg


def test_unknown_top_level_key_and_bad_nested_value():
    with pytest.raises(ConfigError, match=r"^r.yaml:4: modle: unknown key"):
        parse_recipe(GOOD.replace("data:", "modle: x\ndata:", 1).replace("model: {factory", "model: {factory", 1), "r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml:3: inputs\[0\]\.dtype:"):
        parse_recipe(GOOD.replace("dtype: float32", "dtype: float33"), "r.yaml")


def test_unknown_pass_and_wrong_version_and_bad_yaml():
    with pytest.raises(ConfigError, match=r"^r.yaml:6: passes\[0\]\.exprt: unknown pass 'exprt'; known passes: distill"):
        parse_recipe(GOOD.replace("- export: {}", "- exprt: {}"), "r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml:1: version: unsupported recipe version 2"):
        parse_recipe(GOOD.replace("version: 1", "version: 2"), "r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml:\d+: not valid YAML"):
        parse_recipe(GOOD + "  - [unclosed\n", "r.yaml")


def test_cross_field_rules_are_reported_on_their_pass():
    text = GOOD.replace("  - export: {}", "  - distill: {epochs: 1}")
    with pytest.raises(ConfigError, match=r"^r.yaml:6: passes\[0\]\.distill: .*exactly one of 'student'"):
        parse_recipe(text, "r.yaml")
    with pytest.raises(ConfigError, match=r"r.yaml:2: model: .*either 'factory'"):
        parse_recipe(GOOD.replace('{factory: "tiny_models:TinyResNet"}', "{}"), "r.yaml")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_the_digits_example_recipe_is_valid():
    from pathlib import Path

    r = load_recipe(Path(__file__).resolve().parents[2] / "examples/digits/recipe.yaml")
    assert [p.pass_name for p in r.passes] == ["distill", "export", "quantize", "evaluate", "tensorrt"]
    assert r.budget.max_accuracy_drop == 0.5 and r.target == "x86-avx2"
