# Placeholder packaging; the foundation work replaces the extension part.
from setuptools import setup

setup(
    name="mixfast",
    version="0.1.0",
    packages=["mixfast", "mixfast.kernels"],
    package_dir={"mixfast": "mixfast", "mixfast.kernels": "kernels"},
)
