"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

For the offloaded data path, `teredo._accel` (src/teredo/_accel.c) sums, cuts and joins packets
and reads the TUN queue in runs. `optional=True`: where no C compiler is available the install
still succeeds and teredo uses the pure-Python twins of the same functions.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("teredo._accel", ["src/teredo/_accel.c"], optional=True),
    ]
)
