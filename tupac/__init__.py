"""tupac: cohort-scale tumor proliferation assessment in breast-cancer H&E whole-slide images.

The package root imports nothing heavy (no torch, ray or mlflow) so that ``import tupac``
and ``tupac --help`` stay fast; import the stage you need from its subpackage.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tupac")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
