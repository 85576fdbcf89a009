"""imgclf: train, fine-tune, compare, analyse and serve image classifiers.

The Python API (README, "The Python API"): `imgclf.train`, `imgclf.compare` and `imgclf.load`, each a thin
layer over what the CLI runs (imgclf.api). They are looked up on first use (PEP 562 `__getattr__`), and torch
only when one is called, so `import imgclf` stays about a millisecond for code that needs `UserError` or
`__version__` alone (the CLI's startup, a web app's error handling).
"""

from imgclf.errors import UserError

__version__ = "0.1.0"

_API = ("Classifier", "Run", "compare", "load", "train")
__all__ = [*_API, "UserError", "__version__"]


def __getattr__(name: str) -> object:
    if name in _API:
        from imgclf import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
