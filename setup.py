"""Maps the top-level folders ir/, backends/ and conformance/ into the portable_moe namespace."""

from setuptools import find_packages, setup

ROOTS = {
    "portable_moe": "portable_moe",
    "portable_moe.ir": "ir",
    "portable_moe.backends": "backends",
    "portable_moe.conformance": "conformance",
}

packages, package_dir = [], {}
for package, folder in ROOTS.items():
    package_dir[package] = folder
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

# data that is not in a package of its own (a folder without __init__.py) must be named from its package
DATA = {
    "portable_moe.backends.triton": ["tuned/*.json"],
    "portable_moe.backends.tvm": ["tuned/*.json"],
    "portable_moe.conformance": ["known_failures/*.json"],
}

setup(packages=packages, package_dir=package_dir, package_data={"": ["*.json"], **DATA})
