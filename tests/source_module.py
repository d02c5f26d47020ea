"""The uncompiled source of a module busd compiles from Python (the .py files setup.py
lists, each with its .pxd), loaded beside the compiled one as the oracle of its
differential test."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType


def load_source(compiled: ModuleType) -> ModuleType:
    """The .py next to `compiled`'s extension module, run as a module of its own name."""
    path = Path(compiled.__file__).with_name(compiled.__name__.rpartition(".")[2] + ".py")
    loader = SourceFileLoader(compiled.__name__.replace(".", "_") + "_oracle", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # as an import would: dataclasses look it up there
    loader.exec_module(module)
    return module
