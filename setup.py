# Metadata and options are in pyproject.toml. This file only lists the packages:
# every folder under minigrad/ (with or without __init__.py), plus `minigrad.kernels`,
# whose files live in the top-level folder kernels/ (mapped by [tool.setuptools]
# package-dir in pyproject.toml; a `packages.find` table there cannot add it).
from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["minigrad", "minigrad.*"],
                                       exclude=["*__pycache__*"]) + ["minigrad.kernels"])
