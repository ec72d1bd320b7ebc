"""The built-in dispatchers (concurrency strategies): inline, thread, fork, pool, prefork, asyncio.

Each module is a sockwork plugin registering its dispatcher through the
``sockwork_add_dispatchers`` hook, like any third-party plugin.
"""

import typing

from sockwork._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from .aio import AsyncioDispatcher as AsyncioDispatcher
    from .aio import AsyncioOptions as AsyncioOptions
    from .fork import ForkDispatcher as ForkDispatcher
    from .fork import ForkOptions as ForkOptions
    from .inline import InlineDispatcher as InlineDispatcher
    from .inline import InlineOptions as InlineOptions
    from .pool import PoolDispatcher as PoolDispatcher
    from .pool import PoolOptions as PoolOptions
    from .prefork import PreforkDispatcher as PreforkDispatcher
    from .prefork import PreforkOptions as PreforkOptions
    from .thread import ThreadDispatcher as ThreadDispatcher
    from .thread import ThreadOptions as ThreadOptions

_EXPORTS = {
    "AsyncioDispatcher": ".aio",
    "AsyncioOptions": ".aio",
    "ForkDispatcher": ".fork",
    "ForkOptions": ".fork",
    "InlineDispatcher": ".inline",
    "InlineOptions": ".inline",
    "PoolDispatcher": ".pool",
    "PoolOptions": ".pool",
    "PreforkDispatcher": ".prefork",
    "PreforkOptions": ".prefork",
    "ThreadDispatcher": ".thread",
    "ThreadOptions": ".thread",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
