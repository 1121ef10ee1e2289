"""Synthetic demo/test data: scene pairs with exact truth and test drone frames.

Used by tests, ``buildwatch synth`` and training; never imported by the nightly run.
"""
