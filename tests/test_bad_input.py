"""Bad input fails with our own error, says what to do, and leaves no trace."""

from __future__ import annotations

import os

import pytest

import bgdl_nb as bg
from bgdl_nb._resume import ResumeState, encode_resume_data


@pytest.fixture
def session(state_dir):
    s = bg.Session(bg.Configuration.background("bad"))
    yield s
    s.close()


def _journal_is_empty(session: bg.Session) -> bool:
    return session.all_tasks() == [] and [e.event for e in session.event_log()] == []


@pytest.mark.parametrize("url, message", [
    ("ftp://example.org/file", "only http:// and https://"),
    ("file:///etc/passwd", "only http:// and https://"),
    ("example.org/file", "only http:// and https://"),
    ("http:///nohost", "no host"),
    ("http://host:99999/x", "malformed"),
    ("http://host/a b", "whitespace"),
    (42, "must be a string"),
])
def test_unsupported_urls(session, tmp_path, url, message):
    with pytest.raises(bg.UnsupportedURL, match=message) as info:
        session.download_task(url, tmp_path / "x")
    assert isinstance(info.value, ValueError)  # also a ValueError, as Python users expect
    assert _journal_is_empty(session)


def test_destination_that_is_a_directory(session, tmp_path):
    with pytest.raises(bg.InvalidDestination, match="is a directory"):
        session.download_task("http://127.0.0.1:9/x", tmp_path)
    assert _journal_is_empty(session)


def test_destination_under_a_file(session, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(bg.InvalidDestination, match="not a directory"):
        session.download_task("http://127.0.0.1:9/x", tmp_path / "file" / "x")
    assert _journal_is_empty(session)


def test_destination_not_writable(tmp_path):
    """As a user without write permission (root checks this as nobody, in a forked child)."""
    from bgdl_nb._checks import check_destination
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() != 0:
        with pytest.raises(bg.InvalidDestination, match="not writable"):
            check_destination(locked / "x", overwrite=False)
        return
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:  # let nobody reach the directory
        if parent.stat().st_mode & 0o001 == 0 and str(parent).startswith("/tmp/"):
            os.chmod(parent, parent.stat().st_mode | 0o001)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            try:
                check_destination(locked / "x", overwrite=False)
                os.write(write_fd, b"accepted")
            except bg.InvalidDestination as exc:
                os.write(write_fd, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert "not writable" in message


def test_existing_destination_is_never_touched(session, tmp_path):
    dest = tmp_path / "precious"
    dest.write_bytes(b"keep me")
    with pytest.raises(bg.InvalidDestination, match="already exists"):
        session.download_task("http://127.0.0.1:9/x", dest)
    assert dest.read_bytes() == b"keep me" and _journal_is_empty(session)


@pytest.mark.parametrize("data", [b"", b"random bytes that are not resume data", "text", None])
def test_malformed_resume_data(session, data):
    with pytest.raises(bg.InvalidResumeData, match="download_task"):
        session.download_task_with_resume_data(data)
    assert _journal_is_empty(session)


def test_resume_data_signed_by_another_user_is_refused(session, tmp_path):
    state = ResumeState("http://127.0.0.1:9/x", {}, "/etc/passwd", 0, 10, None)
    forged = encode_resume_data(state, b"x" * 32)
    with pytest.raises(bg.InvalidResumeData, match="altered"):
        session.download_task_with_resume_data(forged)
    assert _journal_is_empty(session)


@pytest.mark.parametrize("field, value", [
    ("max_concurrent_tasks", 0), ("timeout_interval_for_request", 0), ("max_retries", -1),
])
def test_bad_configuration(field, value):
    with pytest.raises(bg.InvalidConfiguration, match=field):
        bg.Configuration.default(**{field: value})


@pytest.mark.parametrize("identifier", ["", "../escape", "a/b", "x" * 200, ".hidden"])
def test_bad_identifier(identifier):
    with pytest.raises(bg.InvalidConfiguration, match="identifier"):
        bg.Configuration.background(identifier)


def test_bad_task_options(session, tmp_path):
    with pytest.raises(bg.InvalidInput, match="priority"):
        session.download_task("http://127.0.0.1:9/x", tmp_path / "x", priority=2)
    with pytest.raises(bg.InvalidInput, match="sha256"):
        session.download_task("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc")
    assert _journal_is_empty(session)


def test_two_unfinished_tasks_never_share_a_destination(session, tmp_path):
    first = session.download_task("http://127.0.0.1:9/x", tmp_path / "x")
    with pytest.raises(bg.InvalidDestination, match=f"task {first.task_identifier} already downloads"):
        session.download_task("http://127.0.0.1:9/y", tmp_path / "x")
    first.cancel()
    with pytest.raises(bg.Cancelled):
        first.wait(10)
    session.download_task("http://127.0.0.1:9/y", tmp_path / "x")  # free again once it completed
