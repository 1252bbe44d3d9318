"""The agent's view model (daemon/board.py) as a table: what the tray's icon and tooltip say for
what the board holds. No agent, no thread, no file."""

from __future__ import annotations

import pytest

from torchkeeper.daemon import view as V
from torchkeeper.daemon.board import Board
from torchkeeper.engine.records import TargetStatus


def board(paused=False, **shown) -> Board:
    b = Board(lambda: paused)
    if shown:
        b.set(**shown)
    return b


def with_targets(b: Board, *states: str) -> Board:
    for i, state in enumerate(states):
        name = f"t{i}"
        b.target(name, TargetStatus(name, f"/envs/{name}", f"/envs/{name}/lib/site-packages", state),
                 state, state, None)
    return b


CASES = [
    # id, board, overall, tooltip contains
    ("no targets, nothing found", board(), V.OK, "add one with `torchkeeper target add PATH`"),
    ("all patched", with_targets(board(), "patched", "stock"), V.OK, "2 targets ok"),
    ("one drifted", with_targets(board(), "patched", "drifted"), V.ATTENTION, "t1 drifted"),
    ("missing torch is an error", with_targets(board(), "missing"), V.ERROR, "t0 missing"),
    ("driver needs a reboot", with_targets(board(driver_error=True), "patched"), V.ERROR, "ok"),
    ("watching degraded", with_targets(board(degraded="boom"), "patched"), V.ATTENTION,
     "watching: degraded - checking every 10 s"),
    ("writing", with_targets(board(working="t0"), "patched"), V.WORKING, "1 target ok"),
    ("paused", with_targets(board(paused=True), "patched"), V.PAUSED, "(auto re-apply paused)"),
    ("a download shows its progress", with_targets(board(fetching="torchkeeper: downloading x 40%"),
                                                   "drifted"), V.WORKING, "downloading x 40%"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_view(case):
    _, b, overall, words = case
    v = b.view()
    assert v.overall == overall and words in v.tooltip, v


def test_a_hold_is_said_in_the_tooltip_and_every_change_reaches_the_listeners():
    b = with_targets(board(), "patched")
    seen = []
    b.listen(lambda v: seen.append(v.tooltip))
    b.holds["t0"] = {"describe": "held by bench (pid 7) since 10:00:00"}
    b.set(working="t0")
    b.set(working=None)
    assert len(seen) == 2 and "'t0' held by bench (pid 7)" in seen[-1]
    assert b.view().overall == V.OK


def test_a_field_set_from_one_thread_is_not_lost_to_another():
    """Shown is replaced whole under the lock: two fields set one after the other both stay."""
    b = board()
    b.set(driver_line="driver 580.1")
    b.set(working="t0")
    v = b.view()
    assert v.driver == "driver 580.1" and v.overall == V.WORKING
