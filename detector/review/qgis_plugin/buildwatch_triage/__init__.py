# SPDX-License-Identifier: AGPL-3.0-or-later
"""buildwatch triage: a QGIS plugin for the morning review of buildwatch's cases (``cases.qgs``).

Imports only QGIS, PyQt (through ``qgis.PyQt``) and the standard library: it runs in any QGIS
3.22+ without buildwatch installed. Installed from the zip ``buildwatch qgis-plugin`` writes.
"""


def classFactory(iface):  # noqa: N802 - the name QGIS calls
    """QGIS's entry point: the plugin object for this QGIS interface."""
    from .plugin import TriagePlugin

    return TriagePlugin(iface)
