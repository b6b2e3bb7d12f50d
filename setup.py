"""Only the optional compiled parts live here; everything else is in pyproject.toml.

For the offloaded data path, `teredo._accel` (src/teredo/_accel.c) sums, cuts and joins packets
and reads the TUN queue in runs. `optional=True`: where no C compiler is available the install
still succeeds and teredo uses the pure-Python twins of the same functions.

The kernel data path (src/teredo/bpf/datapath.bpf.c) is compiled with clang into BPF bytecode
next to its source, `datapath.bpf.o`, when clang and the libbpf headers (Debian: clang,
libbpf-dev) are there; otherwise the install goes on without it and
`teredo.adapters.bpf.KernelDataPath.open` says why it is unavailable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BPF_SOURCE = os.path.join("src", "teredo", "bpf", "datapath.bpf.c")
BPF_OBJECT = "datapath.bpf.o"
BPF_HELPERS = "/usr/include/bpf/bpf_helpers.h"


class BuildExtensionsAndBpf(build_ext):
    """build_ext, then the BPF object; a failure of the latter only warns."""

    def run(self) -> None:
        super().run()
        self._build_bpf()

    def _build_bpf(self) -> None:
        clang = shutil.which("clang")
        if clang is None or not os.path.exists(BPF_HELPERS):
            print("warning: clang or libbpf-dev missing: the kernel data path is not built")
            return
        in_place = self.inplace or getattr(self, "editable_mode", False)
        directory = (
            os.path.dirname(BPF_SOURCE)
            if in_place
            else os.path.join(self.build_lib, "teredo", "bpf")
        )
        os.makedirs(directory, exist_ok=True)
        command = [clang, "-O2", "-g", "-target", "bpf", "-Wall"]
        multiarch = sysconfig.get_config_var("MULTIARCH")
        if multiarch and os.path.isdir(f"/usr/include/{multiarch}"):
            command.append(f"-I/usr/include/{multiarch}")  # <asm/types.h>
        command += ["-c", BPF_SOURCE, "-o", os.path.join(directory, BPF_OBJECT)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"warning: the kernel data path did not compile:\n{done.stderr}")


setup(
    ext_modules=[
        Extension("teredo._accel", ["src/teredo/_accel.c"], optional=True),
    ],
    cmdclass={"build_ext": BuildExtensionsAndBpf},
)
