"""Package layout beyond pyproject.toml: the repository's ``configs/`` and ``sweeps/`` folders (the one
source of both) shipped inside the package as ``lightning_mem.configs`` and ``lightning_mem.sweep_files``
(see lightning_mem/cli/packaged.py)."""

from setuptools import find_packages, setup

DATA = {"lightning_mem.configs": "configs", "lightning_mem.sweep_files": "sweeps"}  # package -> repo folder

setup(
    packages=[*find_packages(include=["lightning_mem*"]), *DATA],
    package_dir=DATA,
    package_data={"lightning_mem.results": ["dashboard.html"], **{name: ["**/*.yaml"] for name in DATA}},
)
