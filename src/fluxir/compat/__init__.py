"""Every private API of a dependency, and every patch of one, in one module per dependency (accelerate's offload
hook sits in ``diffusers``, beside the Flux forward code that fires it).

Each module names the version its code was written for and calls :func:`require` when it is imported, so
another version fails at import with a message that names the package, both versions and the file to
update, instead of an ``AttributeError`` deep inside a run. Only ``importlib.metadata`` is read: importing a
compat module never imports the dependency itself.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import SpecifierSet
from packaging.version import Version


def require(distribution: str, supported: str, module: str) -> None:
    """Raise ImportError unless the installed ``distribution`` is in ``supported`` (a PEP 440 range).

    A package that is not installed passes: its own import fails later with pip's name for it.
    """
    try:
        installed = version(distribution)
    except PackageNotFoundError:
        return
    if Version(installed) not in SpecifierSet(supported):
        path = module.replace(".", "/")
        raise ImportError(
            f"{module} uses private code of {distribution} written for {distribution}{supported}, but "
            f"{distribution} {installed} is installed: install {distribution}{supported} (pyproject.toml), or check "
            f"src/{path}.py against {distribution} {installed} and widen its range."
        )
