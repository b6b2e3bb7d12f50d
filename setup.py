"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

`teredo._checksum` sums packets for the offloaded data path (see src/teredo/_checksum.c).
`optional=True`: where no C compiler is available the install still succeeds and teredo uses
its pure-Python sum.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("teredo._checksum", ["src/teredo/_checksum.c"], optional=True),
    ]
)
