"""sapient-backend-cpu: the NumPy reference kernels of sapient_core.

``sapient_backend_cpu.kernels`` holds one function per op (plain NumPy, importable on its own);
``sapient_backend_cpu.plugin`` marks them as hook implementations.
"""

__version__ = "0.2.0"
