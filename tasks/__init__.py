"""The work of anomalyforge: pure, typed functions. No Prefect imports here (flows/ wires them)."""

from importlib.metadata import PackageNotFoundError, version

try:
    CODE_VERSION = version("anomalyforge")
except PackageNotFoundError:  # running from a source tree that was never installed
    CODE_VERSION = "0+unknown"
