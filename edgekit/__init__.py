"""edgekit: compress a PyTorch model, ship it as a signed bundle, serve and manage it on a fleet.

The ``edgekit`` package holds the core contracts every component shares (errors, the bundle and its
manifest, device profiles, MQTT wire schemas) plus the compression toolchain (``edgekit.compress``)
and the CLI. The core imports neither torch nor onnxruntime.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
