"""Built-in passes; importing this package registers each one under its config type."""

from edgekit.compress.passes.distill import DistillConfig
from edgekit.compress.passes.evaluate import EvaluateConfig
from edgekit.compress.passes.export import ExportConfig
from edgekit.compress.passes.prune import PruneConfig
from edgekit.compress.passes.qat import QATConfig
from edgekit.compress.passes.quantize import QuantizeConfig
from edgekit.compress.passes.tensorrt import TensorRTConfig

__all__ = ["DistillConfig", "EvaluateConfig", "ExportConfig", "PruneConfig", "QATConfig", "QuantizeConfig", "TensorRTConfig"]
