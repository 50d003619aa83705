"""Versions, in a module that imports nothing (``import sapient_core`` reads it)."""

#: The version of the sapient-core distribution.
__version__ = "0.2.0"

#: The hook API version this core speaks: what a plugin written today declares as
#: ``backend_capabilities()["api_version"]`` (as a literal).
HOOK_API_VERSION = 2

#: Every hook API version the core still accepts.  A plugin that declares another one is refused with
#: a message naming both versions and the package to upgrade.
SUPPORTED_API_VERSIONS = (1, 2)
