"""What the tests expect of NumPy's BLAS here, read from NumPy's own build record (not from the plugin)."""

from __future__ import annotations

import sys

import numpy as np


def _blas_name():
    config = getattr(np.__config__, "CONFIG", None)           # NumPy >= 1.26 (Meson builds)
    if config is not None:
        return str(config.get("Build Dependencies", {}).get("blas", {}).get("name", ""))
    info = np.__config__.get_info("blas_ilp64_opt_info") or np.__config__.get_info("blas_opt_info")
    return " ".join(info.get("libraries", []))


#: NumPy's wheels ship OpenBLAS with a 64-bit-integer cblas_sgemm (NumPy >= 2 names it scipy-openblas):
#: where NumPy has it, the fused attention must find and use it.  Not on Windows, where the plugin
#: looks the symbol up through NumPy's extension module, which does not expose its DLL's symbols.
NUMPY_HAS_OPENBLAS = sys.platform != "win32" and "openblas" in _blas_name().lower()
