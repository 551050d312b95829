"""bench: benchmarking vision architectures on Ray."""
__version__ = "0.1.0"
