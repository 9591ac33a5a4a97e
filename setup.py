"""pip install --no-build-isolation .  -> the tinysam_c Python module (ctypes over
libtinysam.so, built here with make; numpy is the only runtime dependency)."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithLibrary(build_py):
    def run(self):
        subprocess.run(["make", "-C", HERE, "-j2", "build/libtinysam.so"], check=True)
        super().run()
        dest = os.path.join(self.build_lib, "tinysam_c")
        os.makedirs(dest, exist_ok=True)
        shutil.copy(os.path.join(HERE, "build", "libtinysam.so"), dest)


setup(
    name="tinysam_c",
    version="0.1.0",
    description="segment-anything's predictor and generators on the tinysam C engine",
    package_dir={"": "python"},
    packages=["tinysam_c"],
    install_requires=["numpy"],
    cmdclass={"build_py": BuildWithLibrary},
    zip_safe=False,
)
