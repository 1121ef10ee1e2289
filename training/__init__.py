"""buildwatch training: datasets, ultralytics training, evaluation and ONNX export (extra ``train``)."""
