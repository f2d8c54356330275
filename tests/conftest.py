"""The suite never writes the user's cache: PORTABLE_MOE_CACHE_DIR (a fresh temporary folder unless the
caller set one) holds every cache, including those of Options built directly in a test."""

import atexit
import os
import shutil
import tempfile

from portable_moe.backends import base


def pytest_configure(config):
    if "PORTABLE_MOE_CACHE_DIR" not in os.environ:
        os.environ["PORTABLE_MOE_CACHE_DIR"] = tempfile.mkdtemp(prefix="portable-moe-tests-")
        atexit.register(shutil.rmtree, os.environ["PORTABLE_MOE_CACHE_DIR"], True)
    base.DEFAULT_CACHE_DIR = os.environ["PORTABLE_MOE_CACHE_DIR"]
