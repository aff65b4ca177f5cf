"""Session configuration: what URLSessionConfiguration is to URLSession.

``Configuration.default()`` runs transfers on the in-kernel engine thread and keeps
nothing on disk but partial files (resume data still works).
``Configuration.background(identifier)`` journals every task and event under the
identifier in the user state directory, so a new process that creates a session with
the same identifier reattaches to its tasks.

Every field is keyword-only and documented where it is declared.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ._exceptions import InvalidConfiguration

__all__ = ["Configuration", "state_dir"]

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


NETWORK_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file", "ssl_cert_dir",
                     "netrc", "home")
"""Environment variables (any case) a Session copies into ``Configuration.environment``."""


def network_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The network variables of ``source`` (proxies, certificates, netrc), names lowercased."""
    return {name.lower(): value for name, value in source.items() if name.lower() in NETWORK_VARIABLES and value}


def state_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding journals, resume-data keys and inboxes.

    ``override`` wins, then the ``BGDL_STATE_DIR`` environment variable, then the
    platform's user state directory (``platformdirs.user_state_dir("bgdl_nb")``).
    """
    if override is not None:
        return Path(override).expanduser().resolve()
    env = os.environ.get("BGDL_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_state_dir("bgdl_nb")).resolve()


@dataclass(kw_only=True, eq=True)
class Configuration:
    """How a :class:`~bgdl_nb.Session` behaves. Build one with :meth:`default` or
    :meth:`background`, then set fields as the seeds do (``config.is_discretionary =
    True``) or pass them as keywords. Each assignment is checked at once; a misspelt
    name is an error naming the nearest field. A :class:`~bgdl_nb.Session` takes a copy
    when it is created (as URLSession does): changing the object afterwards changes
    nothing for that session, and says so with a warning."""

    identifier: str | None = None
    """Name of a background session; ``None`` for a default (non-journaled) session."""

    is_discretionary: bool = False
    """The default of ``is_discretionary`` for this session's tasks (seed: set on the
    configuration): such tasks wait until no other work runs, inside
    ``discretionary_window``, with the reason always shown."""

    state_directory: Path | None = None
    """Where journals live; ``None`` means :func:`state_dir` decides."""

    max_concurrent_tasks: int = 4
    """How many tasks transfer at once; waiting tasks start as soon as a slot frees
    (the "N downloads in parallel" of a download manager). A slot frees with a task's
    last byte: putting its file in place (digest, fsync, rename) needs no connection."""

    http_maximum_connections_per_host: int = 6
    """Upper bound on simultaneous connections to one host (URLSession's name)."""

    timeout_interval_for_request: float = 60.0
    """Seconds without a single byte before a connection counts as stalled and is
    retried from the durable offset. There is no total timeout on a body: a download
    that takes hours is normal."""

    timeout_interval_for_resource: float = 7 * 24 * 3600.0
    """Seconds a task may exist (waiting and running) before it fails (URLSession's
    default is seven days)."""

    connect_retries: int = 2
    """Retries when no connection can be made at all (refused, unknown host): a server
    that is down answers at once, so the task fails in about a second, as curl does."""

    max_retries: int = 8
    """Consecutive failed attempts (without a byte of progress) before a task fails."""

    retry_backoff: float = 0.5
    """First retry delay in seconds; it doubles up to 30 s. A server's Retry-After wins."""

    progress_interval: float = 0.5
    """Seconds between two ``did_write_data`` calls (and journaled progress rows) per task."""

    discretionary_window: tuple[float, float] | None = None
    """Hours of local time (start, end), e.g. ``(1, 6)``, when discretionary tasks may run;
    ``None``: any time. A window may wrap midnight, e.g. ``(22, 6)``. (URLSession leaves
    this to the system; here it is yours to set.)"""

    bandwidth_limit: float | None = None
    """Bytes per second for the whole session (a token bucket); ``None``: unlimited.
    Change it while tasks run with ``session.bandwidth_limit = ...``."""

    sessions_send_launch_events: bool = True
    """URLSession's ``sessionSendsLaunchEvents``, true by default as there. Events that
    happen while no client is attached wait for the next session of the identifier, and
    the person is told when tasks finish then: ``bgdl service status`` says how many
    finished while nobody watched, and a desktop notification (``notify-send``) says so
    where the desktop offers one. With a ``launch_command``, the transfer service also
    runs it: a process that creates this session receives the events, as a relaunched
    app would. ``False``: the events still wait, silently, and nothing is run."""

    launch_command: tuple[str, ...] | None = None
    """The command the service runs, e.g. ``("python", "handle.py")`` or, for a notebook,
    ``("jupyter", "execute", "handle.ipynb")``. It runs with ``BGDL_LAUNCHED_FOR`` set to
    the identifier and ``BGDL_STATE_DIR`` to the state directory."""

    launch_directory: str | None = None
    """The folder ``launch_command`` runs in (relative names in it are read there); ``None``
    means the working folder of the process that created the session. The transfer service
    itself runs elsewhere, so nothing in that folder is imported by it."""

    launch_delay: float = 60.0
    """The relaunch rate limiter: tasks created by a launched process start only after
    ``launch_delay * 2 ** (launches - 1)`` seconds, where ``launches`` counts launches
    since an interactive client last attached (then it resets to 0)."""

    use_service: bool | None = None
    """Background sessions only: run transfers in the transfer service, a separate
    process that keeps downloading while the kernel is busy, restarting or dead
    (``True``), or in this process, pausing while no process holds the session
    (``False``). ``None``: the service, unless the environment sets ``BGDL_IN_PROCESS=1``."""

    allows_insecure_redirects: bool = False
    """Follow an https URL's redirect to plain http (refused by default)."""

    verify_tls: bool = True
    """Verify TLS certificates."""

    ca_bundle: str | None = None
    """A PEM file of the certificate authorities to trust instead of the system's (a
    private CA); ``None``: the system's, which honours ``SSL_CERT_FILE``."""

    proxy: str | None = None
    """An HTTP proxy for every request (``http://host:port``, credentials allowed);
    ``None``: ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` from
    :attr:`environment`, as curl and pip read them."""

    block_private_networks: bool = False
    """For shared notebook servers: refuse to connect to loopback, link-local (such as a
    cloud's metadata service at 169.254.169.254), private and reserved addresses, checked
    after name resolution at connect time and at every redirect hop
    (:class:`BlockedDestination`), unless listed in ``allowed_networks``."""

    allowed_networks: tuple[str, ...] = ()
    """Networks (``"10.1.0.0/16"``, ``"127.0.0.1/32"``) reachable even with
    ``block_private_networks``."""

    environment: dict[str, str] | None = None
    """The variables the network setup comes from: proxies (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``), certificates (``SSL_CERT_FILE``, ``SSL_CERT_DIR``) and
    credentials (``NETRC``, else ``~/.netrc``). ``None``: the Session copies them from
    ``os.environ`` when it is created, so a transfer service started earlier by another
    process still uses this process's settings."""

    max_redirects: int = 10
    """Redirect hops followed before the task fails."""

    connections_per_file: int | None = None
    """Connections one file may use (segmented download, like ``aria2c -x``): ``None``
    starts on one connection and, if that one is slow (under 200 MB/s: a server's
    per-connection cap, a long path), adds connections while the file's throughput still
    grows, up to ``http_maximum_connections_per_host``; a number splits the file at once
    over that many; 1 never splits a file. Only files whose server gives a strong
    validator, byte ranges and a length are split."""

    delegate_close_timeout: float = 10.0
    """Seconds ``session.close()`` waits for delegate callbacks still queued or running;
    a callback that has not returned by then is named in a warning and abandoned (a
    background session delivers the rest to its next session)."""

    secret_query_params: tuple[str, ...] = ()
    """More query parameter names whose values are secrets (``*`` as a wildcard), on top
    of :data:`bgdl_nb._redact.SECRET_QUERY_PARAMS` (``token``, ``signature``, ``key``, ``X-Amz-*``, …):
    they are shown as ``REDACTED`` in messages, event rows, ``repr`` and the CLI."""

    retry_after_cap: float = 3600.0
    """The longest ``Retry-After`` honoured, in seconds: a server asking for more makes
    the task fail with a message naming the time it asked for, instead of waiting days."""

    low_speed_limit: float = 1000.0
    """Bytes per second below which a connection counts as trickling (curl's
    ``--speed-limit``); 0 turns the check off."""

    low_speed_time: float = 60.0
    """Seconds a connection may stay below ``low_speed_limit`` before it is dropped and
    the download retried from its durable offset (curl's ``--speed-time``)."""

    claim_lease: float = 120.0
    """Seconds a destination's claim holds for other machines without being refreshed. A
    claim names the task that will write the file; on the same machine bgdl_nb can see
    whether that task can still run, from another machine (shared storage) it cannot, so
    a running task refreshes its claim every quarter lease and a claim older than its
    lease is taken over. Clocks of the machines sharing the storage must agree to well
    within it (NTP does)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name.startswith("_") or not self.__dict__.get("_ready"):
            object.__setattr__(self, name, value)  # the constructor, or private state
            return
        names = [f.name for f in dataclasses.fields(self)]
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; the fields are {', '.join(names)}"
            raise InvalidConfiguration(f"Configuration has no field {name!r}{hint}")
        dataclasses.replace(self, **{name: value}, _whole=False)  # type: ignore[arg-type]
        if self.__dict__.get("_in_use"):
            warnings.warn(f"this Configuration was already used to create a Session, which took a copy; "
                          f"setting {name} changes only sessions created from now on", stacklevel=2)
        object.__setattr__(self, name, value)
        if name in ("launch_command", "secret_query_params", "allowed_networks"):
            self._normalise()

    def _normalise(self) -> None:
        if self.launch_command is not None and not isinstance(self.launch_command, str):
            object.__setattr__(self, "launch_command", tuple(str(a) for a in self.launch_command))
        if not isinstance(self.secret_query_params, str):
            object.__setattr__(self, "secret_query_params", tuple(str(a) for a in self.secret_query_params))
        if not isinstance(self.allowed_networks, str):
            object.__setattr__(self, "allowed_networks", tuple(str(a) for a in self.allowed_networks))

    _whole: dataclasses.InitVar[bool] = True

    def __post_init__(self, _whole: bool) -> None:
        self._normalise()
        self._check_fields()
        if _whole:
            self.check_together()
        object.__setattr__(self, "_ready", True)

    def check_together(self) -> None:
        """Checks that involve several fields (run when a Session is created, so fields
        can be set one at a time in any order)."""

    def _check_fields(self) -> None:
        if self.identifier is not None and not _IDENTIFIER.match(self.identifier):
            raise InvalidConfiguration(
                f"session identifier {self.identifier!r} is not allowed: use 1-128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        for name in ("max_concurrent_tasks", "http_maximum_connections_per_host", "max_redirects"):
            if getattr(self, name) < 1:
                raise InvalidConfiguration(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("timeout_interval_for_request", "timeout_interval_for_resource",
                     "progress_interval", "retry_backoff", "delegate_close_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidConfiguration(f"{name} must be a positive number of seconds")
        if self.connections_per_file is not None and self.connections_per_file < 1:
            raise InvalidConfiguration(f"connections_per_file must be at least 1 (or None for automatic), got "
                                       f"{self.connections_per_file}")
        if self.bandwidth_limit is not None and not self.bandwidth_limit > 0:
            raise InvalidConfiguration("bandwidth_limit must be a positive number of bytes per second, or None")
        if self.discretionary_window is not None:
            start, end = self.discretionary_window
            if not (0 <= start <= 24 and 0 <= end <= 24) or start == end:
                raise InvalidConfiguration("discretionary_window must be two different hours between 0 and 24, "
                                           "e.g. (1, 6)")
        if self.launch_command is not None and (isinstance(self.launch_command, str) or not self.launch_command):
            raise InvalidConfiguration("launch_command must be a non-empty sequence of arguments, "
                                       "e.g. ('python', 'handle.py')")
        if self.launch_delay < 0:
            raise InvalidConfiguration("launch_delay must be 0 or more seconds")
        if self.ca_bundle is not None and not os.path.isfile(os.path.expanduser(str(self.ca_bundle))):
            raise InvalidConfiguration(f"ca_bundle {self.ca_bundle!r} is not a file: give the path of a PEM file "
                                       "of certificate authorities")
        if self.proxy is not None and not str(self.proxy).startswith(("http://", "https://")):
            raise InvalidConfiguration(f"proxy {self.proxy!r} must be an http:// or https:// URL, e.g. "
                                       "'http://proxy.example:3128'")
        if self.environment is not None and not (isinstance(self.environment, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.environment.items())):
            raise InvalidConfiguration("environment must be a dict of variable names to strings, "
                                       "e.g. {'HTTPS_PROXY': 'http://proxy:3128'}")
        if isinstance(self.allowed_networks, str):
            raise InvalidConfiguration("allowed_networks must be a sequence of networks, e.g. ('10.0.0.0/8',)")
        for network in self.allowed_networks:
            try:
                ipaddress.ip_network(str(network), strict=False)
            except ValueError:
                raise InvalidConfiguration(f"allowed_networks: {network!r} is not a network such as '10.0.0.0/8' "
                                           "or an address such as '127.0.0.1'") from None
        if isinstance(self.secret_query_params, str):
            raise InvalidConfiguration("secret_query_params must be a sequence of names, e.g. ('session_key',)")
        if not self.retry_after_cap > 0 or not self.low_speed_time > 0 or self.low_speed_limit < 0:
            raise InvalidConfiguration("retry_after_cap and low_speed_time must be positive seconds, "
                                       "low_speed_limit 0 (off) or more bytes per second")
        if not self.claim_lease >= 1:
            raise InvalidConfiguration("claim_lease must be at least 1 second (the default, 120, suits shared storage)")
        if self.max_retries < 0 or self.connect_retries < 0:
            raise InvalidConfiguration("max_retries and connect_retries must be 0 or more")

    @classmethod
    def default(cls, **fields: object) -> Configuration:
        """A session whose transfers run inside this process, with no journal."""
        return cls(**fields)  # type: ignore[arg-type]

    @classmethod
    def background(cls, identifier: str, **fields: object) -> Configuration:
        """A journaled session: tasks and events outlive the process under ``identifier``."""
        return cls(identifier=identifier, **fields)  # type: ignore[arg-type]

    @property
    def is_background(self) -> bool:
        """Whether this is a background configuration (it has an identifier)."""
        return self.identifier is not None

    @property
    def runs_in_service(self) -> bool:
        """Whether this configuration's sessions run in the transfer service."""
        if not self.is_background:
            return False
        if self.use_service is not None:
            return self.use_service
        return os.environ.get("BGDL_IN_PROCESS", "") not in ("1", "true", "yes")

    def replace(self, **changes: object) -> Configuration:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def _copy_for_session(self) -> Configuration:
        """The copy a Session keeps; this object then warns when it is changed."""
        self.check_together()
        object.__setattr__(self, "_in_use", True)
        launch_directory = self.launch_directory
        if self.launch_command is not None and launch_directory is None:
            launch_directory = os.getcwd()  # where the person who named the command stood
        return dataclasses.replace(self, environment=network_environment(
            os.environ if self.environment is None else self.environment), launch_directory=launch_directory)

    def resolved_state_dir(self) -> Path:
        """The state directory in use: ``state_directory``, or the one :func:`state_dir` picks."""
        return state_dir(self.state_directory)

    def journal_path(self) -> Path:
        """The journal of this background session (:class:`InvalidConfiguration` for a default one)."""
        if self.identifier is None:
            raise InvalidConfiguration("a default configuration has no journal")
        return self.resolved_state_dir() / "sessions" / f"{self.identifier}.sqlite3"

