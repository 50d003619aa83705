"""sapient-backend-example: a third-party sapient_core backend, written by following CONTRIBUTING.md.

The hooks are in :mod:`sapient_backend_example.plugin`, the module the entry point names.
"""
