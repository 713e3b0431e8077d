"""The installed versions of the libraries a bundle or a report depends on, as every layer records
them (a bundle's ``tool_versions``, a report's machine section)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def library_versions(names, python: bool = False) -> dict[str, str]:
    """{name: version} of those of ``names`` that are installed (and ``python``'s own, if asked)."""
    found = {"python": platform.python_version()} if python else {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
