"""fastsort: fast differentiable sorting and top-k learning."""
from ._version import __version__
