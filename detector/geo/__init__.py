"""Geo chores done one way for the whole project: raster open/validate/stretch/write
(``raster``), the metric working CRS (``crs``), window arithmetic on the working grid (``grid``)."""
