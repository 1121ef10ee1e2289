"""The review side: the case registry across nights (``registry``), evidence chips, the QGIS
project and the nightly report."""
