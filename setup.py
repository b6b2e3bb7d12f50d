"""Only the optional C accelerators live here; everything else is in pyproject.toml.

For the offloaded data path, `teredo._accel` sums, cuts and joins packets (src/teredo/_accel.c)
and `teredo.runtime._tun_runs` reads the TUN queue in runs (src/teredo/runtime/_tun_runs.c).
`optional=True`: where no C compiler is available the install still succeeds and teredo uses
the pure-Python twins of the same functions.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("teredo._accel", ["src/teredo/_accel.c"], optional=True),
        Extension(
            "teredo.runtime._tun_runs", ["src/teredo/runtime/_tun_runs.c"], optional=True
        ),
    ]
)
