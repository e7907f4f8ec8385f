"""The package version, defined here only: setup.py reads this file (without importing the package,
which needs the compiled extension) and ``domino_kernels.__version__`` re-exports it."""
__version__ = "0.1.0"
