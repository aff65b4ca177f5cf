"""What ``bgdl list`` and ``bgdl events`` read: a session's journal, without taking it over.

Both read the SQLite journal of a background session read-only (a transfer service or a
kernel may hold the session meanwhile); without ``--id`` both list the sessions of the
state directory. A list whose tasks the journal shows as running says so when the
transfer service that should move them does not answer.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import sys
from pathlib import Path

from ._config import Configuration
from ._exceptions import BgdlError, InvalidInput
from ._redact import redact_url

__all__ = ["cmd_events", "cmd_list", "journal_of"]


def journal_of(identifier: str) -> Path:
    path = Configuration.background(identifier).journal_path()
    if not path.exists():
        raise InvalidInput(f"no background session {identifier!r} under {path.parent}; check --id "
                           "(and BGDL_STATE_DIR)")
    return path


def _sessions() -> int:
    """Every session of the state directory, with its folder and how far it got."""
    from collections import Counter

    from ._config import state_dir
    from ._journal import read_journal
    from ._private import private_tree
    if (state_dir() / "sessions").exists():
        private_tree(state_dir(), "sessions")  # a journal another user could have planted is not listed as ours
    journals = sorted((state_dir() / "sessions").glob("*.sqlite3"))
    if not journals:
        print(f"no sessions under {state_dir() / 'sessions'}")
        return 0
    print(f"{'session':<28} {'tasks':>6} {'done':>6} {'failed':>7}  folder")
    for journal in journals:
        identifier = journal.name[: -len(".sqlite3")]
        try:
            tasks, _ = read_journal(journal, identifier, events=False)
        except BgdlError:
            print(f"{identifier:<28} {'?':>6} {'?':>6} {'?':>7}  (journal unreadable: moved aside when next opened)")
            continue
        folders = Counter(str(Path(t.destination).parent) for t in tasks if t.destination)
        folder = folders.most_common(1)[0][0] if folders else "(inbox)"
        outcomes = Counter(t.outcome for t in tasks)
        print(f"{identifier:<28} {len(tasks):>6} {outcomes['done']:>6} {outcomes['failed']:>7}  {folder}")
    print("show one with --id SESSION")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ._journal import read_journal

    if args.id is None:
        return _sessions()
    tasks, _ = read_journal(journal_of(args.id), args.id, events=False)
    print(f"{'id':>5}  {'state':<10} {'received':>14} {'total':>14}  {'status':>6}  url -> destination")
    for t in tasks:
        err = f"  [{t.error.get('type')}: {t.error.get('message')}]" if t.error else ""
        total = "?" if t.total is None else str(t.total)
        print(f"{t.task_identifier:>5}  {t.outcome:<10} {t.offset:>14} {total:>14}  {t.status or '':>6}  "
              f"{redact_url(t.url)} -> {t.destination or '(inbox)'}{err}")
    if any(t.outcome == "running" for t in tasks):
        _say_if_the_service_is_not_answering()
    return 0


def _say_if_the_service_is_not_answering() -> None:
    """The journal says "running"; a transfer service that does not answer moves nothing,
    and whoever reads the list must know (the list itself reads the journal, not the service)."""
    from ._hosts.service.control import service_status
    from ._hosts.service.protocol import ServiceNotAnswering
    try:
        service_status()
    except ServiceNotAnswering as exc:
        print(f"bgdl: the tasks shown as running may not be moving: {exc}", file=sys.stderr)
    except BgdlError:
        pass  # no service, or one this user cannot ask: the list stands as the journal has it


def cmd_events(args: argparse.Namespace) -> int:
    from ._events import EVENT_COLUMNS
    from ._journal import read_journal

    if args.id is None:
        return _sessions()
    _, events = read_journal(journal_of(args.id), args.id)
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(EVENT_COLUMNS)
        for e in events:
            row = e.as_dict()
            row["time"] = _dt.datetime.fromtimestamp(e.time, _dt.timezone.utc).isoformat()
            writer.writerow([row[c] for c in EVENT_COLUMNS])
        return 0
    for e in events:
        stamp = _dt.datetime.fromtimestamp(e.time, _dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        parts = [f"{e.seq:>6} {stamp}", f"task {e.task_identifier}" if e.task_identifier else "session",
                 e.event]
        if e.total_bytes_written is not None:
            parts.append(f"{e.total_bytes_written}/{e.total_bytes_expected if e.total_bytes_expected is not None else '?'}")
        if e.status is not None:
            parts.append(f"HTTP {e.status}")
        if e.error:
            parts.append(e.error)
        if e.detail:
            parts.append(e.detail)
        print("  ".join(parts))
    return 0
