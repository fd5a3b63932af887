"""Each package's ``__all__`` is exactly its public names, sorted (httpx's rule)."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = [
    "ormtune",
    "ormtune.exceptions",
    "ormtune.typing",
    "ormtune.querylog",
    "ormtune.nplusone",
    "ormtune.batchload",
    "ormtune.caching",
    "ormtune.backends",
    "ormtune.instrumentation",
    "ormtune.testing",
    "ormtune.repository",
    "ormtune.integrity",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__.startswith("ormtune")
    }
    exported = set(module.__all__)
    assert exported >= public, f"public but not exported: {sorted(public - exported)}"
    assert all(hasattr(module, attr) for attr in module.__all__)
    assert list(module.__all__) == sorted(module.__all__)


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    import ormtune

    assert ormtune.__version__ == version("ormtune")
