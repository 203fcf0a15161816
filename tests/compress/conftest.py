"""Fixtures for the compress tests: tiny models, data files and checkpoints in a temp folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

torch = pytest.importorskip("torch", reason="edgekit compress needs torch (pip install edgekit[compress])")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """Data files and checkpoints of every tiny model (created once per session)."""
    import tiny_models as tm

    d = tmp_path_factory.mktemp("compress")
    torch.manual_seed(0)
    x, y = tm.image_data(256, 16, 4)
    np.savez(d / "images.npz", x=x, y=y)
    s, sy = tm.signal_data()
    np.savez(d / "signals.npz", x=s, y=sy)
    ids, mask, ty = tm.token_data()
    np.savez(d / "tokens.npz", input_ids=ids, attention_mask=mask, y=ty)
    for name, model in [("res", tm.TinyResNet()), ("mobile", tm.TinyMobileNet()), ("sig", tm.Tiny1D()),
                        ("enc", tm.TinyEncoder())]:
        torch.save(model.state_dict(), d / f"{name}.pt")
    return d


RES_RECIPE = """\
version: 1
bundle: {{name: tinyres, version: 0.1.0, golden_samples: 8}}
model: {{factory: "tiny_models:TinyResNet", checkpoint: {wd}/res.pt}}
inputs: [{{name: image, dtype: float32, shape: [batch, 1, 16, 16]}}]
outputs: [logits]
data: {{source: {wd}/images.npz}}
budget: {{max_accuracy_drop: 100}}
passes:
  - prune: {{ratio: 0.5, finetune_epochs: 1}}
  - export: {{}}
  - quantize: {{calibration_samples: 64}}
"""


@pytest.fixture
def res_recipe(workdir, tmp_path) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(RES_RECIPE.format(wd=workdir))
    return p
