"""The public API is exactly what __all__ says, and concrete public classes are final."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import inspect
import site
from pathlib import Path

import pytest

import sockwork

pytestmark = pytest.mark.timeout(10)

PUBLIC_MODULES = ["sockwork", "sockwork.strategies", "sockwork.transports", "sockwork.errors",
                  "sockwork.handlers", "sockwork.registry", "sockwork.testing", "sockwork.urls",
                  "sockwork.assembly", "sockwork.interfaces", "sockwork.forking", "sockwork.validators",
                  "sockwork.slots", "sockwork.deadlines", "sockwork.limits", "sockwork.aio"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_names_exist_and_are_unique(name: str) -> None:
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for attribute in module.__all__:
        assert hasattr(module, attribute), f"{name}.__all__ lists missing {attribute}"


def test_top_level_all_is_exact() -> None:
    public = {n for n in dir(sockwork) if not n.startswith("_")}  # lazy names too (PEP 562 __dir__)
    modules = {n for n in public if inspect.ismodule(getattr(sockwork, n))}
    assert set(sockwork.__all__) == public - modules


@pytest.mark.parametrize("name", ["sockwork.strategies", "sockwork.transports"])
def test_concrete_public_classes_are_final(name: str) -> None:
    module = importlib.import_module(name)
    for attribute in module.__all__:
        value = getattr(module, attribute)
        if inspect.isclass(value):
            assert getattr(value, "__final__", False), f"{name}.{attribute} should be @final"


def test_installed_layout() -> None:
    """One import package, 'sockwork'; the source folder names do not land in site-packages."""
    for directory in {*site.getsitepackages(), site.getusersitepackages()}:
        for name in ("framework", "strategies", "transports"):
            assert not (Path(directory) / name).exists(), f"{name} installed into {directory}"
    assert importlib.metadata.version("sockwork") == sockwork.__version__
    assert importlib.resources.files("sockwork").joinpath("py.typed").is_file()
    assert importlib.import_module("sockwork.strategies.pool").__name__ == "sockwork.strategies.pool"
