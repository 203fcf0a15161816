"""Architecture checks: the import-linter layering contracts, and the agent side without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Blocks torch (and friends) at import time: any attempt raises ImportError.
NO_TORCH = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torch_pruning", "torchvision"}:
                raise ImportError(f"{name} is blocked: the agent side must run without torch")
    sys.meta_path.insert(0, _Block())
    """
)


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_core_and_runtimes_work_without_torch(tiny_bundle, signing_keys, tmp_path):
    """Import every non-compress module and verify + run a bundle with torch made unimportable."""
    _, pub, keydir = signing_keys
    script = NO_TORCH + textwrap.dedent(
        f"""
        import importlib, pkgutil, pathlib
        import numpy as np
        for pkg in ("edgekit", "runtimes", "devices", "fleet"):
            mod = importlib.import_module(pkg)
            for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
                name = info.name
                if name.startswith(("edgekit.compress", "runtimes.torchref")):
                    continue
                importlib.import_module(name)
        from edgekit.bundle import verify_bundle
        from edgekit.signing import load_public_keys
        from runtimes import get_runtime
        vb = verify_bundle(pathlib.Path({str(tiny_bundle)!r}), load_public_keys([pathlib.Path({str(keydir)!r})]),
                           pathlib.Path({str(tmp_path / 'x')!r}))
        g = vb.golden()
        with get_runtime("onnxruntime").load(vb.model_path) as s:
            out = s.run(g.inputs)
        np.testing.assert_allclose(out["logits"], g.outputs["logits"], rtol=1e-4, atol=1e-5)
        assert not get_runtime("torch").available()[0]
        print("no-torch OK")
        """
    )
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "no-torch OK" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
