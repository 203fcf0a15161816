"""The CLI module stays importable where torch is not installed (the agent side's machines)."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torch_pruning', 'onnxscript'):
            raise ImportError(f'{name} is blocked: pretend it is not installed')
        return None
sys.meta_path.insert(0, _NoTorch())
import edgekit.compress, edgekit.compress.cli
from edgekit.cli import build_app
app = build_app()
print('ok', 'torch' in sys.modules)
"""


def test_compress_cli_imports_without_torch():
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok False"
