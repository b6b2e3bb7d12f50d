"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

`teredo._accel` sums, cuts and joins packets for the offloaded data path (src/teredo/_accel.c).
`optional=True`: where no C compiler is available the install still succeeds and teredo uses
its pure-Python twins of the same functions.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("teredo._accel", ["src/teredo/_accel.c"], optional=True),
    ]
)
