"""A configured collection the source does not have fails capture naming the closest names, and
the demo workload invents documents only for the demo collections."""

from __future__ import annotations

import pytest

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture.capture import capture_changes
from lambda_functions.cdc_capture.change_source import open_source
from lambda_functions.cdc_capture.errors import CollectionNotFoundError
from lambda_functions.lake import RawZone, open_store


def test_a_misspelt_collection_fails_capture_naming_the_closest_names(make_request):
    """Issue 12: LAKEHOUSE_COLLECTIONS=shop.ordrs was accepted silently; the embedded source
    invented 497 documents for it and a new warehouse table appeared."""
    orders = make_request(demo_changes=20)
    with open_source(orders) as source:  # the demo collection exists after its first capture
        capture_changes(orders, source=source)
    typo = make_request(collection="ordrs", demo_changes=20)
    with pytest.raises(CollectionNotFoundError) as raised, open_source(typo) as source:
        capture_changes(typo, source=source)
    message = str(raised.value)
    assert "shop.ordrs" in message and "Did you mean shop.orders?" in message
    assert "LAKEHOUSE_COLLECTIONS" in message
    with EmbeddedChangeStreamSource(typo.source_location) as source:
        assert source.count_documents("shop", "ordrs") == 0
        assert "ordrs" not in source.list_collection_names("shop")
    assert RawZone(open_store(typo.lake_uri), "shop", "ordrs").batch_numbers() == []


def test_the_demo_workload_invents_documents_only_for_the_demo_collections(make_request):
    for collection in ("orders", "customers", "invoices"):
        with open_source(make_request(collection=collection, demo_changes=5)):
            pass
    with EmbeddedChangeStreamSource(make_request().source_location) as source:
        assert source.count_documents("shop", "orders") > 0
        assert source.count_documents("shop", "customers") > 0
        assert source.count_documents("shop", "invoices") == 0


def test_a_collection_that_exists_in_the_source_is_captured_whatever_its_name(make_request):
    request = make_request(collection="invoices", demo_changes=5)
    with EmbeddedChangeStreamSource(request.source_location) as source:
        source.enable_change_streams("shop", "invoices")
        source.insert_one("shop", "invoices", {"_id": 1, "total": 3})
    with open_source(request) as source:
        result = capture_changes(request, source=source)
    assert result.rows == 1
