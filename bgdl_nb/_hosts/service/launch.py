"""What the transfer service does for a session nobody is attached to when its events come
(``sessions_send_launch_events``): run its ``launch_command``, rate-limited, or tell the
person once every task has ended (a desktop notification where there is one; the count is
also in ``bgdl service status``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..._events import EventKind

if TYPE_CHECKING:
    from .hosted import Hosted

__all__ = ["launch", "tell"]

log = logging.getLogger("bgdl_nb.service")


def launch(hosted: Hosted, run_dir: Path, state_dir: Path) -> None:
    """sessionSendsLaunchEvents: tell the person about events nobody is there to see
    and, with a launch command, run it."""
    config = hosted.engine.config
    if not config.sessions_send_launch_events or hosted.clients:
        return
    if not config.launch_command:
        tell(hosted)
        return
    if hosted.launched is not None and hosted.launched.poll() is None:
        return  # the process launched before will receive these events too
    import subprocess
    import threading
    hosted.launches += 1
    log_path = run_dir / f"launch-{hosted.identifier}.log"
    try:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                list(config.launch_command), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, cwd=config.launch_directory or None,
                env={**os.environ, "BGDL_LAUNCHED_FOR": hosted.identifier, "BGDL_STATE_DIR": str(state_dir)})
    except OSError as exc:  # a command or folder that is gone: say so where the person looks
        hosted.engine.note(EventKind.LAUNCHED, f"launch {hosted.launches}: could not run "
                           f"{' '.join(config.launch_command)} in {config.launch_directory}: {exc}")
        return
    threading.Thread(target=proc.wait, name="bgdl-launch-reaper", daemon=True).start()
    hosted.launched = proc
    delay = config.launch_delay * 2 ** (hosted.launches - 1)
    hosted.engine.note(EventKind.LAUNCHED, (
        f"launch {hosted.launches}: ran {' '.join(config.launch_command)} (pid {proc.pid}); tasks it creates "
        f"wait {delay:g} s; output in {log_path}"))


def tell(hosted: Hosted) -> None:
    """Once every task of a session nobody watches has ended: a desktop notification
    where there is a desktop (the count is also in ``bgdl service status``)."""
    if hosted.engine.busy or not hosted.unattended or hosted.told == len(hosted.unattended):
        return
    hosted.told = len(hosted.unattended)
    failed = hosted.unattended.count(EventKind.FAILED.value)
    text = (f"{len(hosted.unattended) - failed} finished" + (f", {failed} failed" if failed else "")
            + f" while no notebook was attached; open Session(Configuration.background({hosted.identifier!r})) "
            "to receive their events")
    log.info("session %s: %s", hosted.identifier, text)
    notify = shutil.which("notify-send")
    if notify and (os.environ.get("DBUS_SESSION_BUS_ADDRESS") or os.environ.get("DISPLAY")):
        import subprocess
        with contextlib.suppress(OSError):
            subprocess.Popen([notify, "--app-name=bgdl_nb", f"bgdl_nb: {hosted.identifier}", text],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
