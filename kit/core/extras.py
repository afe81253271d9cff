"""The optional dependencies, probed in one place: which extra of the package brings each, and
the one-line error a verb gives when its extra is not installed."""
from kit.core.errors import KitError

PACKAGE = "competition-kit"
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "pydantic": "serve", "starlette": "serve",
          "matplotlib": "report", "bitsandbytes": "qlora"}


def install_hint(module):
    """How to install an optional module: its extra, or the pinned requirements of a checkout."""
    extra = EXTRAS.get(module.split(".")[0])
    where = f"pip install '{PACKAGE}[{extra}]'" if extra else f"pip install {module}"
    return f"{where} (in a checkout: pip install -r requirements.txt)"


def missing_extra(error, what):
    """A KitError for a ModuleNotFoundError of an optional dependency; None for any other module
    (a missing core dependency is a broken install, and its traceback is the better message)."""
    module = (error.name or "").split(".")[0]
    if module not in EXTRAS:
        return None
    return KitError(f"{what} needs {module}, which is not installed: {install_hint(module)}")
