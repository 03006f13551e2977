"""xdpswitch's control plane. The version is the installed package's (pyproject.toml is its one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xdpswitch")
except PackageNotFoundError:   # run from a source tree that was never installed
    __version__ = "0+unknown"
