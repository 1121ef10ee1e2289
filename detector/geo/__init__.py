"""Geo chores done one way for the whole project: raster open/validate/stretch/write
(``raster``), the metric working CRS and ground measures (``crs``), the grids, window arithmetic
and the one grid reader (``grid``), DSMs in metres (``dsm``), local files and URLs (``location``)."""
