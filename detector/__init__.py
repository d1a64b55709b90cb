"""detector: risk scores with reasons for diversion of export-controlled AI chips."""

__version__ = "0.1.0"
