"""Optional dependencies, imported when first needed, with an error that names the pip extra to install."""
from __future__ import annotations

import importlib


class MissingDependencyError(ImportError):
    """An optional package gpucnn.interop needs is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, what: str):
    """The imported `module`; MissingDependencyError naming ``gpucnn[extra]`` when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{what} needs the {module.split('.')[0]} package, which cannot be imported "
                                     f"({e}); install it with: pip install 'gpucnn[{extra}]'") from None
