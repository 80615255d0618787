"""A pickle loader that only rebuilds plain containers and numpy arrays.

CIFAR ships as pickles; an ordinary ``pickle.load`` runs whatever a tampered file names
(``os.system`` ...). This Unpickler resolves an allow-list of globals and refuses the rest.
"""

from __future__ import annotations

import codecs
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import CbdmError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') under protocol < 3; allow only that.
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8"):
        raise CbdmError(f"pickle asks for codec {encoding!r}, which is not allowed")
    return codecs.encode(obj, encoding, errors)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")

ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _multiarray.scalar for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _numeric._frombuffer for m in _NUMERIC_MODULES},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _mod in ("builtins", "__builtin__"):
    for _name, _obj in (("dict", dict), ("list", list), ("tuple", tuple), ("bytes", bytes),
                        ("bytearray", bytearray), ("str", str), ("int", int), ("float", float),
                        ("set", set), ("frozenset", frozenset)):
        ALLOWED[(_mod, _name)] = _obj


MAX_ALLOC_BYTES = 1 << 28  # bytes(N) / bytearray(N) larger than this are refused


def _capped(kind: type, cap: int) -> Any:
    """``bytes`` / ``bytearray`` that refuse to allocate ``N > cap`` zero bytes from an integer:
    a legitimate file never needs that, a hostile one could ask for terabytes."""

    def make(*args: Any) -> Any:
        if args and isinstance(args[0], int) and not isinstance(args[0], bool) and args[0] > cap:
            raise CbdmError(f"pickle asks for a {args[0]}-byte {kind.__name__}, more than the {cap} allowed")
        return kind(*args)

    return make


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only returns objects from :data:`ALLOWED` (with
    ``bytes`` and ``bytearray`` capped at ``max_alloc`` bytes)."""

    def __init__(self, *args: Any, max_alloc: int = MAX_ALLOC_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_alloc = max_alloc

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in ("bytes", "bytearray"):
            return _capped(bytes if name == "bytes" else bytearray, self.max_alloc)
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise CbdmError(
                f"refusing to unpickle {module}.{name}: only plain data and numpy arrays are allowed"
            ) from None


def safe_load(path: Path | str, file: BinaryIO | None = None) -> Any:
    """Load a (Python 2 or 3) pickle with ``encoding='bytes'`` through :class:`RestrictedUnpickler`."""
    try:
        if file is not None:
            return RestrictedUnpickler(file, encoding="bytes").load()
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except CbdmError as e:
        raise CbdmError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, zlib.error, OSError, MemoryError, OverflowError) as e:
        raise CbdmError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
