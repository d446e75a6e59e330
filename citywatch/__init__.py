"""citywatch: a streaming engine for a city's environmental operations centre."""

__version__ = "0.1.0"
