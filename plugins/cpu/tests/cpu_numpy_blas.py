"""What the tests expect of NumPy's BLAS here, read from NumPy's own build record (not from the plugin)."""

from __future__ import annotations

import numpy as np

#: NumPy's wheels ship OpenBLAS with a 64-bit-integer cblas_sgemm (NumPy >= 2 names it scipy-openblas):
#: where NumPy has it, the fused attention must find and use it.
NUMPY_HAS_OPENBLAS = "openblas" in str(getattr(np.__config__, "CONFIG", {}).get("Build Dependencies", {})
                                       .get("blas", {}).get("name", "")).lower()
