"""The core's transition table (sidecar.core.phases): pure, no servers."""

from __future__ import annotations

import pytest

from sidecar.core.phases import TRANSITIONS, ImpossibleTransition, Phase, check, table_markdown


def test_every_phase_has_a_row_and_exited_is_terminal() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert TRANSITIONS[Phase.EXITED] == {}
    for source, targets in TRANSITIONS.items():
        assert source not in targets, f"{source} lists itself"


def test_every_phase_but_the_first_is_reachable_and_every_phase_reaches_exited() -> None:
    reachable = {Phase.STARTING}
    frontier = [Phase.STARTING]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(Phase)
    for phase in Phase:
        seen, todo = {phase}, [phase]
        while todo:
            for target in TRANSITIONS[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        assert Phase.EXITED in seen, f"{phase} can never exit"


def test_a_transition_outside_the_table_is_refused() -> None:
    check(Phase.CONFIRMED, Phase.CONFIRMED)  # staying is always allowed
    check(Phase.CONFIRMED, Phase.DRAINING)
    with pytest.raises(ImpossibleTransition, match="drained -> confirmed"):
        check(Phase.DRAINED, Phase.CONFIRMED)
    with pytest.raises(ImpossibleTransition):
        check(Phase.SUPERSEDED, Phase.CONFIRMED)  # only through registering again


def test_the_markdown_table_has_one_row_per_transition() -> None:
    rows = table_markdown().splitlines()[2:]
    assert len(rows) == sum(len(t) for t in TRANSITIONS.values())
    assert "| draining | drained |" in table_markdown()


def test_the_readme_shows_the_table_as_it_is() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    shown = readme.split("<!-- phases:begin -->\n", 1)[1].split("\n<!-- phases:end -->", 1)[0]
    assert shown == table_markdown()
