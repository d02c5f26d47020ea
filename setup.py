"""Builds busd's Cython extensions; all other metadata lives in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True}

FRAME_CRC = "busd/store/local/crc32_fold.h"  # included by both through _frame.pxd

extensions = [
    Extension("busd._core", ["busd/_core.pyx"]),
    Extension("busd.bus._sublist", ["busd/bus/_sublist.pyx"]),
    Extension("busd.server.body_budget", ["busd/server/body_budget.py"]),
    Extension("busd.server.coalesce", ["busd/server/coalesce.py"]),
    Extension("busd.server.http", ["busd/server/http.py"]),
    Extension("busd.server.api", ["busd/server/api.py"]),
    Extension("busd.server.metrics", ["busd/server/metrics.py"]),
    Extension("busd.store.stored", ["busd/store/stored.py"]),
    Extension("busd.store.listener", ["busd/store/listener.py"]),
    Extension("busd.store.intake", ["busd/store/intake.py"]),
    Extension("busd.bus.publication", ["busd/bus/publication.py"]),
    Extension("busd.bus.fanout", ["busd/bus/fanout.py"]),
    Extension("busd.bus.broker", ["busd/bus/broker.py"]),
    Extension("busd.store.local.store", ["busd/store/local/store.py"]),
    Extension("busd.store.local.tail", ["busd/store/local/tail.py"]),
    Extension("busd.store.local._framing", ["busd/store/local/_framing.pyx"], libraries=["z"],
              depends=[FRAME_CRC]),
    Extension("busd.store.local._crypto", ["busd/store/local/_crypto.pyx"], libraries=["z"],
              depends=[FRAME_CRC]),
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
