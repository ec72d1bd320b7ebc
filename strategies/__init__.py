"""The built-in dispatchers (concurrency strategies): inline, thread, fork, pool, prefork.

Each module is a sockwork plugin registering its dispatcher through the
``sockwork_add_dispatchers`` hook, like any third-party plugin.
"""

from .fork import ForkDispatcher, ForkOptions
from .inline import InlineDispatcher, InlineOptions
from .pool import PoolDispatcher, PoolOptions
from .prefork import PreforkDispatcher, PreforkOptions
from .thread import ThreadDispatcher, ThreadOptions

__all__ = [
    "ForkDispatcher",
    "ForkOptions",
    "InlineDispatcher",
    "InlineOptions",
    "PoolDispatcher",
    "PoolOptions",
    "PreforkDispatcher",
    "PreforkOptions",
    "ThreadDispatcher",
    "ThreadOptions",
]
