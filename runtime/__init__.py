"""edgevfm.runtime: runs a bundle with numpy, Pillow, tokenizers and a backend. Never torch."""

from .bundle import FORMAT_VERSION, Bundle, open_bundle
from .errors import (BundleError, BundleExistsError, EdgeVfmError, InputError, MissingExtraError,
                     UnknownNameError)
from .pipeline import load

__version__ = "0.1.0"

__all__ = ["FORMAT_VERSION", "Bundle", "BundleError", "BundleExistsError", "EdgeVfmError", "InputError",
           "MissingExtraError", "UnknownNameError", "load", "open_bundle", "__version__"]
