"""interlink-slurm: an interLink plugin that runs Kubernetes pods as Slurm jobs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("interlink-slurm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
