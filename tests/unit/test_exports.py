"""The public API is exactly what __all__ says, and concrete public classes are final."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import inspect
import pkgutil
import re
import site
from pathlib import Path

import pytest

import sockwork

pytestmark = pytest.mark.timeout(10)

COMPATIBILITY = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"


def documented_public_modules() -> list[str]:
    """The modules docs/compatibility.md calls public (item 1 of "What is public"), with each non-private
    module of sockwork.strategies and sockwork.transports."""
    text = COMPATIBILITY.read_text()
    item = text[text.index("1. the names in `__all__`"):text.index("2. the hooks")]
    modules = re.findall(r"`(sockwork(?:\.[a-z_]+)*)`", item)
    for package in ("sockwork.strategies", "sockwork.transports"):
        path = importlib.import_module(package).__path__
        modules += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]
    return sorted(set(modules))


PUBLIC_MODULES = documented_public_modules()


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_names_exist_and_are_unique(name: str) -> None:
    """Each module the compatibility policy calls public has an exact ``__all__``."""
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
