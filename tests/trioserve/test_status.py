"""States and their transitions (pure): one table says what may follow what."""

from __future__ import annotations

import pytest

from trioserve._status import (
    APPLICATION_TRANSITIONS,
    DEPLOYMENT_TRANSITIONS,
    ApplicationState,
    DeploymentState,
    ReplicaState,
    StateTransitionError,
    check_transition,
)


def test_states_compare_equal_to_their_names() -> None:
    """Status values stay plain strings for users: ``status == "RUNNING"`` holds."""
    assert ApplicationState.RUNNING == "RUNNING"
    assert f"{DeploymentState.HEALTHY}" == "HEALTHY"
    assert ReplicaState("STOPPING") is ReplicaState.STOPPING


def test_transition_tables_cover_every_state() -> None:
    """Every state has an entry, and every target is a state of the same kind."""
    assert set(DEPLOYMENT_TRANSITIONS) == set(DeploymentState)
    assert set(APPLICATION_TRANSITIONS) == set(ApplicationState)
    for table in (DEPLOYMENT_TRANSITIONS, APPLICATION_TRANSITIONS):
        for old, targets in table.items():
            assert all(type(t) is type(old) for t in targets)


def test_check_transition_allows_listed_changes_and_staying() -> None:
    """Listed changes pass, staying in a state passes."""
    check_transition(DEPLOYMENT_TRANSITIONS, DeploymentState.UPDATING, DeploymentState.HEALTHY)
    check_transition(DEPLOYMENT_TRANSITIONS, DeploymentState.HEALTHY, DeploymentState.HEALTHY)
    check_transition(APPLICATION_TRANSITIONS, ApplicationState.RUNNING, ApplicationState.DELETING)


@pytest.mark.parametrize(
    ("table", "old", "new"),
    [
        (DEPLOYMENT_TRANSITIONS, DeploymentState.DEPLOY_FAILED, DeploymentState.HEALTHY),
        (DEPLOYMENT_TRANSITIONS, DeploymentState.HEALTHY, DeploymentState.DEPLOY_FAILED),
        (APPLICATION_TRANSITIONS, ApplicationState.DELETING, ApplicationState.RUNNING),
        (APPLICATION_TRANSITIONS, ApplicationState.DEPLOY_FAILED, ApplicationState.RUNNING),
    ],
)
def test_check_transition_refuses_unlisted_changes(table: object, old: object, new: object) -> None:
    """A change the table does not list raises, naming both states."""
    with pytest.raises(StateTransitionError, match=f"from {old} to {new}"):
        check_transition(table, old, new)  # type: ignore[arg-type]  # why: parametrized
