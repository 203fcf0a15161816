"""The teacher script (a tiny training smoke run) and the recipes it writes next to the weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from examples.predictive_maintenance import train_teacher
from examples.predictive_maintenance.data import CLASSES

HERE = Path(train_teacher.__file__).resolve().parent


@pytest.mark.parametrize("name", train_teacher.RECIPES)
def test_checked_in_recipes_validate_against_the_compress_schema(name):
    from edgekit.compress.recipe import parse_recipe

    recipe = parse_recipe((HERE / name).read_text(), name)
    assert recipe.target == name.removeprefix("recipe-").removesuffix(".yaml")
    assert [s.name for s in recipe.inputs] == [s["name"] for s in train_teacher.input_specs()]
    assert recipe.labels == list(CLASSES)
    wider = parse_recipe(train_teacher.render_recipe((HERE / name).read_text(), width=48), name)
    assert wider.model.kwargs == {"width": 48}  # the teacher's width, and only the teacher's
    assert wider.passes[0].student_kwargs == recipe.passes[0].student_kwargs == {"width": 32}
    quick = parse_recipe(train_teacher.render_recipe((HERE / name).read_text(), width=16, quick=True), name)
    assert quick.model.kwargs == {"width": 16}
    assert quick.budget.max_accuracy_drop == 100
    assert quick.passes[0].epochs == 2 and quick.passes[0].student_kwargs == {"width": 8}


def test_tiny_training_run_writes_everything_and_reuses_it(tmp_path, capsys):
    out = tmp_path / "teacher"
    args = ["--out", str(out), "--quick", "--width", "8", "--epochs", "1", "--per-class", "6", "--eval-per-class", "2"]
    meta = train_teacher.main(args)
    for f in ("teacher.pt", "teacher.json", "model.py", "pdm.npz", *train_teacher.RECIPES):
        assert (out / f).is_file(), f
    assert set(meta["metrics"]) == {"val", "field"}
    assert 0.0 <= meta["metrics"]["field"]["macro_f1"] <= 1.0
    with np.load(out / "pdm.npz") as z:
        assert z["spectrum"].shape == (6 * len(CLASSES), 2, 256) and z["y_val"].shape == (2 * len(CLASSES),)
        assert {"rms", "rms_val", "band_high", "y"} <= set(z.files)
    assert "kwargs: {width: 8}" in (out / "recipe-x86-avx2.yaml").read_text()

    model, again = train_teacher.load_teacher(out)  # weights-only load rebuilds the same model
    inputs, labels = train_teacher.split_inputs("field", 2)
    assert train_teacher.evaluate(model, inputs, labels) == pytest.approx(again["metrics"]["field"])

    capsys.readouterr()
    train_teacher.main(args)
    assert "already trained" in capsys.readouterr().out
    assert json.loads((out / "teacher.json").read_text())["settings_sha"] == meta["settings_sha"]


def test_bad_arguments_exit_with_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        train_teacher.main(["--out", str(tmp_path), "--epochs", "0"])
    assert exc.value.code == 2


def test_teacher_and_student_take_the_same_inputs():
    import torch

    from examples.predictive_maintenance.model import INPUT_NAMES, bearing_cnn, bearing_student

    inputs, _ = train_teacher.split_inputs("val", 1)
    args = [torch.from_numpy(inputs[k]) for k in INPUT_NAMES]
    teacher, student = bearing_cnn().eval(), bearing_student().eval()
    with torch.inference_mode():
        assert teacher(*args).shape == student(*args).shape == (len(CLASSES), len(CLASSES))
    n_params = [sum(p.numel() for p in m.parameters()) for m in (teacher, student)]
    assert n_params[1] * 10 < n_params[0]
