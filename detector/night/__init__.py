"""The nightly run, in data-flow order: ``mosaic`` (read both epochs onto one working grid) ->
``tiles`` -> ``align`` (co-registration) -> ``detect`` (ONNX Runtime, contract in ``model``) ->
``change`` (the rules that make a detection a change) -> ``georef`` (map polygons, IDs) ->
``export`` (candidates.gpkg); ``pipeline`` runs them."""
