"""Reference data files installed with the package (see data/README.md)."""

from importlib.resources import files


def path(name: str):
    """A reference file shipped in this package, by file name."""
    return files(__name__).joinpath(name)
