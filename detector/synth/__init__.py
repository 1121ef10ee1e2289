"""Synthetic demo/test data: scene pairs with exact truth and test drone frames.

Used by tests, ``buildwatch synth`` and training; never imported by the nightly run.

Scenes: :func:`detector.synth.scene.generate_scene` plans a scene in metres
(:mod:`~detector.synth.layout`), renders every epoch (:mod:`~detector.synth.render`) and
:func:`detector.synth.write.write_scene` writes the GeoTIFFs, truth and ``scene.json``; the
module docstring of :mod:`detector.synth.scene` lists the rest.
"""
