"""sapient-backend-cpu: the CPU reference kernels of sapient_core (NumPy, fused with Numba).

``sapient_backend_cpu.kernels`` holds one function per op (NumPy, with Numba-fused kernels where
Numba imports; importable on its own);
``sapient_backend_cpu.plugin`` marks them as hook implementations.
"""

__version__ = "0.2.0"
