"""pgolf: parameter-constrained language modelling for the Parameter Golf challenge."""

__version__ = "0.1.0"
ARTIFACT_FORMAT_VERSION = 1
