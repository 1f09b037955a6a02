"""mailman: a newsletter delivery daemon built on a faithful asyncio port of Erlang/OTP supervision.

The OTP library lives in :mod:`mailman.supervisor` and knows nothing of newsletters.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailman-otp")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
