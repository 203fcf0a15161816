"""One ``Runtime`` protocol, one backend per module, found by name through entry points.

>>> from runtimes import get_runtime
>>> with get_runtime("onnxruntime").load("model.onnx", profile) as session:
...     outputs = session.run({"input": x})

Backends: ``onnxruntime`` (:mod:`runtimes.ort`), ``tensorrt`` (:mod:`runtimes.trt`), ``torch``
(:mod:`runtimes.torchref`, reference only), ``fake`` (:mod:`runtimes.fake`, for tests). Nothing heavy
is imported until a backend is asked for.
"""

from runtimes.base import Runtime, Session, check_inputs
from runtimes.registry import available_runtimes, get_runtime, runtime_for_profile, runtime_names

__all__ = [
    "Runtime",
    "Session",
    "available_runtimes",
    "check_inputs",
    "get_runtime",
    "runtime_for_profile",
    "runtime_names",
]
