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

setup(packages=packages, package_dir=package_dir, package_data={"": ["*.json"]})
