"""Only what pyproject.toml cannot say: the packages. Every package under podnetd/ is
discovered (a new one, e.g. podnetd.scheduler, needs no edit), and the CNI plugin's package
podnet_cni is mapped to its directory cni-plugin/ (not an importable name, so discovery cannot
find it; pyproject.toml's [tool.setuptools] takes either a list or a search, not both).
tests/test_daemon_cli.py builds a wheel and checks it holds every package."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["podnetd", "podnetd.*"]), "podnet_cni"],
      package_dir={"podnet_cni": "cni-plugin"})
