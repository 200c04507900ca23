"""The sync loop's order of work on a readiness flip: the agent call before the log lines the
core emitted ahead of it (bench/flip_stages.py: 0.15 ms of a 4 ms flip), those lines keeping the
time they were emitted; nothing else moves."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from test_config import VALID

from sidecar.config import load_config
from sidecar.consul.api import ConsulAgent
from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.status import StatusWriter
from sidecar.syncer import Syncer


def _syncer(tmp_path: Path) -> tuple[Syncer, list[str]]:
    config = load_config(dict(VALID, CONSUL_HTTP_ADDR="127.0.0.1:1", KATALOG_STATUS_FILE=str(tmp_path / "status.json")))
    agent = ConsulAgent(config.consul)  # never called: _call is replaced below
    writer = StatusWriter(config.status_file, gate_mode="latch", heartbeat_interval=5.0, agent=agent.address,
                          pod="shop/web-0")
    syncer = Syncer(config, agent, writer)
    order: list[str] = []

    def call(action: a.Call) -> e.CallSucceeded:
        order.append(f"call {type(action).__name__}")
        logging.getLogger("katalog.sync").info("inside the call")
        time.sleep(0.05)
        return e.CallSucceeded(action.request_id, None)

    syncer._call = call  # type: ignore[method-assign]
    return syncer, order


def test_the_call_goes_before_the_lines_emitted_ahead_of_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    syncer, order = _syncer(tmp_path)
    caplog.set_level(logging.DEBUG)
    before = time.time()
    syncer._carry_out([a.Log(logging.INFO, "app not ready: app"), a.Log(logging.DEBUG, "detail"),
                       a.UpdateCheck(1, None, "service:x:readiness", "critical", "app"),
                       a.Log(logging.INFO, "after the call")])
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [("katalog.sync", logging.INFO, "inside the call"),
                     ("katalog.sync", logging.INFO, "app not ready: app"),
                     ("katalog.sync", logging.DEBUG, "detail"),
                     ("katalog.sync", logging.INFO, "after the call")]
    assert order == ["call UpdateCheck"]
    held = caplog.records[1]
    assert before <= held.created < caplog.records[0].created  # stamped when emitted, not when written
    assert caplog.records[3].created - held.created >= 0.04  # ... the call took 50 ms


def test_held_lines_are_written_when_the_call_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    syncer, _ = _syncer(tmp_path)

    def broken(_action: a.Call) -> e.CallSucceeded:
        raise RuntimeError("a bug")

    syncer._call = broken  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    with pytest.raises(RuntimeError):
        syncer._carry_out([a.Log(logging.WARNING, "said before the bug"), a.Deregister(1, None, "x")])
    assert [r.getMessage() for r in caplog.records] == ["said before the bug"]


def test_without_a_call_lines_are_written_at_once_and_in_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    syncer, order = _syncer(tmp_path)
    caplog.set_level(logging.INFO)
    syncer._carry_out([a.Log(logging.INFO, "one"), a.Log(logging.WARNING, "two")])
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]
    assert order == []


def test_a_level_below_the_loggers_is_not_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    syncer, _ = _syncer(tmp_path)
    caplog.set_level(logging.INFO)
    syncer._carry_out([a.Log(logging.DEBUG, "quiet"), a.UpdateCheck(1, None, "c", "passing", "")])
    assert [r.getMessage() for r in caplog.records] == ["inside the call"]
