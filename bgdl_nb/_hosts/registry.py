"""The hosts of this process: one per background identifier, shared by its sessions.

Within a process, sessions created with the same background identifier (and state
folder) share one host: re-running a notebook cell reattaches instead of failing, and
the newest session's delegate receives the callbacks. At interpreter exit every open
host detaches, journaling its last offsets and releasing its locks.
"""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._config import Configuration
    from .._delegate import SessionDelegate
    from .._session import Session
    from .base import Host

__all__ = ["detach_all", "forget", "host_for", "open_here"]

_registry: dict[tuple[str, str], Host] = {}  # (state folder, background identifier) -> its host here
_live: set[Host] = set()  # every open host, closed at interpreter exit
_lock = threading.RLock()


def _key(config: Configuration) -> tuple[str, str]:
    return str(config.resolved_state_dir()), str(config.identifier)


def open_here(config: Configuration) -> bool:
    """Whether a session of this process holds the host of ``config``'s identifier now."""
    with _lock:
        return _key(config) in _registry


def host_for(config: Configuration, session: Session, delegate: SessionDelegate | None) -> Host:
    """The host ``session`` talks to: the open one of its identifier (``session`` attached
    to it, its delegate the newest), else a new one (the transfer service's client for a
    background session unless ``use_service=False``, else an engine thread here)."""
    with _lock:
        key = _key(config) if config.is_background else None
        host = None if key is None else _registry.get(key)
        if host is not None and not host.closed:
            host.attach_session(session, delegate)
        else:
            host = _new_host(config, session, delegate)
            if key is not None:
                _registry[key] = host
        _live.add(host)
    return host


def _new_host(config: Configuration, session: Session, delegate: SessionDelegate | None) -> Host:
    if config.runs_in_service:
        from .service.client import ServiceHost
        return ServiceHost(config, session, delegate)
    from .thread import ThreadHost  # the engine and aiohttp load only where the engine runs
    return ThreadHost(config, session, delegate)


def forget(host: Host) -> None:
    """``host`` is closing: the next session of its identifier gets a new one."""
    with _lock:
        for key, value in list(_registry.items()):
            if value is host:
                del _registry[key]
        _live.discard(host)


@atexit.register
def detach_all() -> None:
    """At interpreter exit, journal the last offsets and release the locks."""
    with _lock:
        hosts = list(_live)
        _registry.clear()
        _live.clear()
    for host in hosts:
        try:
            host.close("detach")
        except Exception:
            pass
