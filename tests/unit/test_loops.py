"""Serving loops survive a failing iteration (counted, logged once with its traceback), and the control
socket answers bad requests, unknown commands and command bugs without dying."""

from __future__ import annotations

import errno
import json
import logging
import socket
from pathlib import Path

import pytest

from ctl.common.loops import LoopErrors
from ctl.common.unixctl import CommandError, Unixctl, request
from ctl.pipeline.ofmatch import FlowSyntaxError


def test_loop_errors_are_counted_and_the_first_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    errors = LoopErrors()

    def boom() -> None:
        raise RuntimeError("bug")

    with caplog.at_level(logging.ERROR):
        assert errors.run("handler", boom) is None
        assert errors.run("handler", boom) is None
        assert errors.run("tick", lambda: 7) == 7
    assert errors.counts() == {"handler": 2}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "2 so far" in caplog.records[-1].getMessage()


def test_running_short_of_descriptors_is_one_line_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    errors = LoopErrors()

    def short() -> None:
        raise OSError(errno.EMFILE, "Too many open files", "/sys/devices/system/cpu/possible")

    with caplog.at_level(logging.ERROR):
        errors.run("tick", short)
    assert errors.counts() == {"tick": 1}
    assert not any(r.exc_info for r in caplog.records)
    assert "for want of resources ([Errno 24] Too many open files" in caplog.records[-1].getMessage()


def test_unixctl_registry_answers_every_kind_of_request(tmp_path: Path) -> None:
    errors = LoopErrors()
    ctl = Unixctl(tmp_path / "sw.ctl", errors)
    ctl.register("echo", lambda text="": {"said": text})
    ctl.register("bad-flow", lambda: (_ for _ in ()).throw(FlowSyntaxError("nope", "a=b", 2, 1)))
    ctl.register("bug", lambda: [][1])
    with pytest.raises(ValueError, match="registered twice"):
        ctl.register("echo", lambda: None)
    assert ctl.run({"cmd": "echo", "args": {"text": "hi"}}) == {"ok": True, "result": {"said": "hi"}}
    assert ctl.run({"cmd": "nope"})["error"] == "unknown command 'nope'"
    assert "bad request" in ctl.run(["not", "an", "object"])["error"]
    assert "bad request" in ctl.run({"cmd": "echo", "args": [1]})["error"]
    assert "unexpected keyword" in ctl.run({"cmd": "echo", "args": {"nope": 1}})["error"]
    assert ctl.run({"cmd": "bad-flow"}) == {"ok": False, "error": "nope", "text": "a=b", "pos": 2, "length": 1}
    assert "internal error" in ctl.run({"cmd": "bug"})["error"] and errors.counts() == {"control": 1}


def test_unixctl_socket_survives_garbage_and_serves_the_next_client(tmp_path: Path) -> None:
    errors = LoopErrors()
    ctl = Unixctl(tmp_path / "sw.ctl", errors)
    ctl.register("echo", lambda text="": text)
    ctl.serve()
    try:
        assert oct((tmp_path / "sw.ctl").stat().st_mode & 0o777) == "0o600"
        for junk in (b"{not json", b"\xff\xfe", b"", json.dumps({"cmd": 5}).encode()):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(tmp_path / "sw.ctl"))
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                reply = json.loads(s.recv(65536))
                assert reply["ok"] is False and "bad request" in reply["error"]
        assert request(tmp_path / "sw.ctl", "echo", text="still here") == "still here"
        with pytest.raises(CommandError, match="unknown command"):
            request(tmp_path / "sw.ctl", "nope")
    finally:
        ctl.close()
    assert not (tmp_path / "sw.ctl").exists()
    with pytest.raises(CommandError, match="nothing is listening"):
        request(tmp_path / "sw.ctl", "echo")


def test_the_daemon_collector_thresholds_leave_old_objects_to_reference_counting() -> None:
    import gc

    from ctl.common.loops import COLLECTOR_THRESHOLDS, tune_collector
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == COLLECTOR_THRESHOLDS
        young, _, old = COLLECTOR_THRESHOLDS
        assert young >= 100_000 and old >= 100   # a pass's stats tuples do not start a full collection
    finally:
        gc.set_threshold(*before)


def test_an_exception_in_a_destructor_is_one_log_line(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import gc
    import sys

    from ctl.common.loops import log_unraisable

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)   # put back after the test
    log_unraisable()

    class HalfMade:   # as an event loop whose self-pipe could not be made (no descriptors left)
        def __del__(self) -> None:
            raise AttributeError("'HalfMade' object has no attribute '_ssock'")

    HalfMade()
    gc.collect()
    assert "HalfMade.__del__ was ignored (AttributeError: 'HalfMade' object has no attribute '_ssock')" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
