"""The night stage: pure tile processing, in data-flow order: ``mosaic`` (read both epochs onto one
working grid) -> ``tiles`` -> ``align`` (co-registration) -> ``detect`` (ONNX Runtime, contract in
``model``) -> ``change`` (the rules that make a detection a change; ``second_view``, ``height``) ->
``georef`` (map polygons, IDs) -> ``export`` (candidates.gpkg). ``tile`` is one tile start to finish
(a pure function of inputs, tile, model, config), ``executors`` run tiles here, on a process pool
or on Dask (``distributed``). The night around them (lock, resume, merge, outputs, cases) is
:mod:`detector.run`, a layer above; nothing here imports it or :mod:`detector.review`."""
