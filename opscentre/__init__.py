"""opscentre: the shared event contract, settings and command line of the pipeline."""

__version__ = "0.1.0"
