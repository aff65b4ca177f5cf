"""The ``bgdl`` command line.

``bgdl fetch`` downloads into a directory and can be re-run after any interruption
(``kill -9`` included) to continue; it exits 0 only when every file is complete and
verified. ``bgdl list`` and ``bgdl events`` read a session's journal without taking
it over. ``bgdl serve`` runs the demo origin; ``bgdl demo`` shows the whole story on it.

Exit codes: 0 success, 1 some downloads failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from ._cli_journal import cmd_events, cmd_list, journal_of
from ._config import Configuration
from ._exceptions import BgdlError, FetchError, InvalidInput

__all__ = ["main"]


def _read_urls(args: argparse.Namespace) -> list[str]:
    urls = list(args.urls)
    if args.input_file:
        try:
            text = sys.stdin.read() if args.input_file == "-" else Path(args.input_file).read_text()
        except OSError as exc:
            raise InvalidInput(f"cannot read the list of URLs {args.input_file}: {exc.strerror or exc}") from None
        urls += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not urls:
        raise InvalidInput("no URLs given: pass URLs as arguments or a file of URLs with -i")
    return urls


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ._fetch import fetch

    if args.manifest and (args.urls or args.input_file):
        raise InvalidInput("give URLs (or -i LIST) or --manifest LISTING, not both")
    if args.extract_dir and not args.unpack:
        raise InvalidInput("--extract-dir needs --unpack")
    urls = None if args.manifest else _read_urls(args)
    fields: dict[str, object] = {}
    for option, value, least in (("--connections", args.connections, 1), ("--max-concurrent", args.max_concurrent, 1),
                                 ("--retries", args.retries, 0)):
        if value is not None and value < least:
            raise InvalidInput(f"{option} must be at least {least}, got {value}")
    if args.connections:  # like aria2c -x: connections for one file, and the host allows that many
        fields["connections_per_file"] = args.connections
        fields["http_maximum_connections_per_host"] = max(args.connections, 6)
    if args.max_concurrent:
        fields["max_concurrent_tasks"] = args.max_concurrent
    if args.retries is not None:
        fields["max_retries"] = fields["connect_retries"] = args.retries
    from ._fetch import default_identifier
    identifier = args.id or default_identifier(Path(args.output).expanduser().absolute())
    config = Configuration.background(identifier, **fields)
    sha = hashes = None
    for option, given in (("--sha256", args.sha256), ("--hash", args.hash)):
        if given and urls is None:
            raise InvalidInput(f"{option} goes with URLs; the digests of --manifest are in its entries")
        if given and urls is not None and len(given) != len(urls):
            raise InvalidInput(f"got {len(given)} {option} values for {len(urls)} URLs; give one per URL")
    if args.sha256:
        sha = list(args.sha256)
    if args.hash:
        hashes = list(args.hash)
    try:
        paths = fetch(urls, args.output, manifest=args.manifest, base_url=args.base_url, sha256=sha, hashes=hashes,
                      unpack=args.unpack, extract_dir=args.extract_dir, name_from_server=args.content_disposition,
                      progress=not args.quiet, configuration=config, overwrite=args.overwrite,
                      on_interrupt="suspend", wait=not args.detach)
    except (FetchError, KeyboardInterrupt):  # the user needs the session to look at it or continue it
        print(f"bgdl: session {identifier} (`bgdl list --id {identifier}` shows its tasks)", file=sys.stderr)
        raise
    if args.detach:
        print(f"bgdl: {len(paths)} download(s) continue in the transfer service; watch them with "
              f"`bgdl list --id {identifier}`, stop them with `bgdl pause --id {identifier}`, and run the same "
              "command without --detach to wait for them", file=sys.stderr)
        return 0
    if not args.quiet:
        for path in paths:
            print(path)
    return 0


_ACTS_ON = {"suspend": "running or waiting", "resume": "paused", "cancel": "unfinished"}


def _acts_on(command: str, task: Any) -> bool:
    """Whether ``bgdl COMMAND`` changes ``task``: nothing touches a finished one, pause
    only one that runs or waits, resume only a paused one."""
    from ._states import TaskState
    if task.state is TaskState.COMPLETED:
        return False
    if command == "suspend":
        return task.state is TaskState.RUNNING
    if command == "resume":
        return task.state is TaskState.SUSPENDED
    return True


def _cmd_control(args: argparse.Namespace) -> int:
    from ._session import Session

    journal_of(args.id)  # a misspelt --id is an error, and makes no empty session
    session = Session(Configuration.background(args.id))
    try:
        named = [t for t in session.all_tasks() if not args.task or t.task_identifier in args.task]
        missing = sorted(set(args.task or ()) - {t.task_identifier for t in named})
        if missing:
            raise InvalidInput(f"session {args.id!r} has no task {', '.join(map(str, missing))}; see "
                               f"`bgdl list --id {args.id}`")
        chosen = [t for t in named if _acts_on(args.command, t)]
        for task in chosen:
            getattr(task, args.command)()
        word = {"suspend": "paused", "resume": "resumed", "cancel": "cancelled"}[args.command]
        if chosen:
            print(f"{word} {len(chosen)} task(s) of {args.id!r}")
        else:
            print(f"nothing to {'pause' if args.command == 'suspend' else args.command} in {args.id!r}: "
                  f"no {_ACTS_ON[args.command]} task among its {len(named)}")
    finally:
        session.close()
    return 0


def _cmd_service(args: argparse.Namespace) -> int:
    import json

    from ._config import state_dir
    from ._hosts.service.control import service_status, start_service, stop_service

    root = state_dir(args.state_dir)
    if args.action == "run":
        from ._hosts.service.server import main as run_service
        return run_service(root, args.idle_timeout, args.ready_fd)
    if args.action == "start":
        pid = start_service(root, args.idle_timeout)
        print(f"transfer service running, pid {pid}, state directory {root}")
        return 0
    if args.action == "stop":
        print("stopped" if stop_service(root) else "no transfer service was running")
        return 0
    status = service_status(root)
    if status is None:
        print(f"no transfer service is running for {root}")
        return 3
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"pid {status['pid']}, up {status['uptime']:.0f} s, {status['clients']} client(s), protocol "
          f"{status['protocol']}, state directory {status['state_dir']}")
    for identifier, info in sorted(status["sessions"].items()):
        away = info.get("finished_unattended", 0), info.get("failed_unattended", 0)
        news = "" if not any(away) else (
            f"; {away[0]} finished" + (f", {away[1]} failed" if away[1] else "") + " while no client was attached")
        if info.get("halted"):
            news += f"; transfers stopped: {info['halted']}"
        print(f"  {identifier}: {info['tasks']} tasks, {info['running']} running, {info['clients']} attached, "
              f"{info['bytes_per_second'] / 1e6:.1f} MB/s{news}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .demo.origin import Origin

    origin = Origin(args.host, args.port, root=args.root)

    async def run() -> None:
        url = await origin.start_async()
        static = f", and {origin.root} as {url}/static/" if origin.root else ""
        print(f"demo origin serving on {url}  (try {url}/files/sample.bin?size=104857600){static}", flush=True)
        if args.idle_exit is None:
            await asyncio.Event().wait()
        while origin.idle_for() < args.idle_exit:  # ends once nobody has asked for anything for a while
            await asyncio.sleep(min(1.0, args.idle_exit))
        print(f"demo origin: idle for {args.idle_exit:g} s, exiting", flush=True)

    asyncio.run(run())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(workdir=args.dir, size_mb=args.size_mb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgdl", description="Resumable background downloads for notebooks.")
    parser.add_argument("--version", action="version", version=f"bgdl_nb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download URLs into a directory (re-run to resume)")
    p.add_argument("urls", nargs="*", metavar="URL")
    p.add_argument("-i", "--input-file", metavar="LIST", help="file with one URL per line ('-' for stdin)")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="destination directory (default: .)")
    p.add_argument("--id", help="background session identifier (default: derived from DIR)")
    p.add_argument("--sha256", action="append", metavar="HEX", help="expected digest, once per URL in order")
    p.add_argument("--hash", action="append", metavar="ALG:HEX",
                   help="expected digest as md5:, sha1:, sha256:, sha512: or blake2b:HEX, once per URL in order")
    p.add_argument("--connections", type=int, metavar="N",
                   help="connections per file, like aria2c -x (default: one, more while a slow file's "
                        "throughput grows)")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="files downloaded at once")
    p.add_argument("--overwrite", action="store_true", help="replace existing files not downloaded by bgdl")
    p.add_argument("--retries", type=int, metavar="N", help="retries per file (default: 8, and 2 when the server "
                                                             "cannot be reached at all)")
    p.add_argument("--detach", action="store_true", help="hand the downloads to the transfer service and return")
    p.add_argument("--manifest", metavar="LISTING", help="fetch the files a listing names instead of URLs: JSON, "
                   "JSON Lines, a Zenodo record, a Hugging Face-style snapshot or a pooch registry file")
    p.add_argument("--base-url", metavar="URL", help="joined to the relative URLs (or paths) of --manifest")
    p.add_argument("--unpack", action="store_true", help="extract zip/tar archives and .gz/.bz2/.xz files once "
                   "downloaded; print the extracted files")
    p.add_argument("--extract-dir", metavar="DIR", help="with --unpack: extract into DIR")
    p.add_argument("--content-disposition", action="store_true",
                   help="name files as the server's Content-Disposition says (made safe)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no output on success")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("list", help="list a session's tasks (without --id: the sessions)")
    p.add_argument("--id")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("events", help="print a session's event log (without --id: the sessions)")
    p.add_argument("--id")
    p.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.set_defaults(func=cmd_events)

    for name, text in (("pause", "suspend"), ("resume", "resume"), ("cancel", "cancel")):
        p = sub.add_parser(name, help=f"{text} tasks of a session no other process holds")
        p.add_argument("--id", required=True)
        p.add_argument("--task", type=int, action="append", help="task identifier (default: all)")
        p.set_defaults(func=_cmd_control, command={"pause": "suspend"}.get(name, name))

    p = sub.add_parser("service", help="the transfer service that runs background sessions")
    p.add_argument("action", choices=["start", "stop", "status", "run"])
    p.add_argument("--state-dir", help="the state directory it serves (default: BGDL_STATE_DIR or the platform's)")
    p.add_argument("--idle-timeout", type=float, default=float(os.environ.get("BGDL_SERVICE_IDLE", "30")),
                   help="seconds without clients and running tasks before it exits (default 30)")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(func=_cmd_service)

    p = sub.add_parser("serve", help="run the demo origin server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="exit after SECONDS without a request (default: serve until stopped)")
    p.add_argument("--root", metavar="DIR", help="also serve the files of DIR under /static/")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="download, kill, resume and verify on the embedded demo origin")
    p.add_argument("--dir", help="working directory (default: a temporary one)")
    p.add_argument("--size-mb", type=int, default=48, help="size of the largest demo file")
    p.set_defaults(func=_cmd_demo)
    return parser


_CLI_WORDS = (
    ("overwrite=True", "--overwrite"),
    ("pass --overwrite", "use --overwrite"),
    ("the download can continue from the error's resume_data", "run the same command again to continue it"),
    ("resume from the error's resume_data", "run the same command again"),
    ("continue from the error's resume_data", "run the same command again to continue"),
    ("Choose another identifier", "Give another --id"),
)


def _cli_words(message: str) -> str:
    """Error messages name Python arguments and objects; on the command line they are
    options, and continuing a failed download is running the same command again."""
    for python, command_line in _CLI_WORDS:
        message = message.replace(python, command_line)
    return message


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A warning is one line of the command's own, not a Python source location."""
    print(f"bgdl: warning: {_cli_words(str(message))}", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM means stop, as Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "fetch":
        signal.signal(signal.SIGTERM, _terminate)
    try:
        with warnings.catch_warnings():  # restored after: main() may run inside another program
            warnings.showwarning = _show_warning
            return int(args.func(args))
    except InvalidInput as exc:
        print(f"bgdl: error: {_cli_words(str(exc))}", file=sys.stderr)
        return 2
    except FetchError as exc:
        print(f"bgdl: {_cli_words(str(exc))}", file=sys.stderr)
        return 1
    except BgdlError as exc:
        print(f"bgdl: error: {_cli_words(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bgdl: interrupted; the downloads are suspended with their partial bytes: run the same command "
              "again to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bgdl events | head`: the reader had enough, as with any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
