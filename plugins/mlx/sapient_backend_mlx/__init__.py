"""sapient-backend-mlx: the MLX kernels of sapient_core.

``sapient_backend_mlx.plugin`` is the entry point ``mlx`` of the group ``sapient_core.backends``.
Importing this package (or the plugin module) never imports MLX: MLX is imported on the first call
that needs it, so a missing or broken MLX makes the plugin report itself unavailable instead of
breaking discovery.  ``sapient_backend_mlx.kernels`` (which does import MLX) holds the kernels and
the array helpers, ``sapient_backend_mlx.device`` the plugin's device, stream and lock, and
``sapient_backend_mlx.cache`` the weight cache and transfer counters.
"""

from __future__ import annotations

__version__ = "0.2.0"

from ._runtime import MLXEvaluationError

__all__ = ["__version__", "configure_weight_cache", "clear_weight_cache", "MLXEvaluationError"]


def configure_weight_cache(max_bytes: int | None = None) -> int:
    """Set the weight cache's byte limit (None: the default, see README.md); returns the limit in force.

    Entries beyond a lower limit are evicted at once, least recently used first; when the cache is full,
    weights that do not fit are streamed (uploaded for each use) rather than evicting ones in use.
    """
    from .cache import WEIGHTS
    return WEIGHTS.configure(max_bytes)


def clear_weight_cache() -> None:
    """Drop every cached weight upload (e.g. after modifying a weight array in place)."""
    from .cache import WEIGHTS
    WEIGHTS.clear()
