"""The route chooser: Lambda unless the collection is configured for ECS or the work would not
fit the function's memory or 15 minutes (with the safety factor)."""

import pytest

from lambda_functions.errors import TERMINAL_ERROR_TYPES
from lambda_functions.registry import CDC_CAPTURE, MERGE
from lambda_functions.routing import (
    SAFETY_FACTOR,
    RouteEstimateError,
    choose_route,
    configured_for_ecs,
    ecs_collections,
)

MB = 2**20


def test_small_work_stays_on_lambda():
    choice = choose_route(MERGE, 100 * MB, 60, configured=False)
    assert choice.route == "lambda"
    assert "lakehouse-merge" in choice.reason


def test_unknown_estimates_stay_on_lambda():
    assert choose_route(MERGE, None, None, configured=False).route == "lambda"


def test_configured_collection_goes_to_ecs_whatever_its_size():
    route, reason = choose_route(MERGE, 1, 1, configured=True)
    assert route == "ecs" and "LAKEHOUSE_ECS_COLLECTIONS" in reason


def test_memory_estimate_over_the_function_memory_goes_to_ecs():
    just_fits = MERGE.memory_mb * MB / SAFETY_FACTOR
    assert choose_route(MERGE, just_fits, None, configured=False).route == "lambda"
    route, reason = choose_route(MERGE, just_fits + MB, None, configured=False)
    assert route == "ecs" and f"{MERGE.memory_mb} MB" in reason


def test_duration_estimate_over_fifteen_minutes_goes_to_ecs():
    assert choose_route(CDC_CAPTURE, None, 600, configured=False).route == "lambda"
    route, reason = choose_route(CDC_CAPTURE, None, 601, configured=False)
    assert route == "ecs" and "900 s" in reason


@pytest.mark.parametrize("estimate", [-1, "10", True])
def test_an_estimate_that_is_not_a_size_is_refused(estimate):
    with pytest.raises(RouteEstimateError) as refused:
        choose_route(MERGE, estimate, None, configured=False)
    assert isinstance(refused.value, ValueError)
    assert "RouteEstimateError" in TERMINAL_ERROR_TYPES


def test_ecs_collections_setting():
    assert ecs_collections("") == frozenset()
    assert ecs_collections(" shop.orders , stats.games,") == {"shop.orders", "stats.games"}
    assert ecs_collections("shop.orders,*") == {"*"}
    assert configured_for_ecs("shop.orders", ecs_collections("*"))
    assert configured_for_ecs("shop.orders", ecs_collections("shop.orders"))
    assert not configured_for_ecs("shop.customers", ecs_collections("shop.orders"))
