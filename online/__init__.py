"""online: a continual-learning text classifier server with a feedback loop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("online")  # the installed package's metadata: one version, in pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
