"""kdmri: knowledge distillation for MRI reconstruction and restoration (KD-MRI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdmri")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
