"""buildwatch runtime: orthomosaic pairs -> tiled ONNX detection -> georeferenced case candidates.

The runtime never imports torch or ultralytics; those live behind the ``train`` extra in
``training/``.
"""

__version__ = "0.1.0"
