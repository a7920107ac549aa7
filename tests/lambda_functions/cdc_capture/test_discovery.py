"""Collection discovery in the data plane: the request, the listing and the handler."""

import pytest
from lambda_functions.cdc_capture.demo_workload import DEMO_COLLECTIONS, DemoWorkload
from lambda_functions.cdc_capture.embedded_source import EmbeddedChangeStreamSource

from lambda_functions.cdc_capture.discovery import list_collections
from lambda_functions.cdc_capture.discovery_handler import handler
from lambda_functions.contracts import DiscoveryRequest, InvalidRequestError


def request_for(tmp_path, database: str) -> DiscoveryRequest:
    return DiscoveryRequest(
        lake_uri=str(tmp_path / "lake"),
        database=database,
        source_location=str(tmp_path / "source.sqlite"),
    )


def test_the_embedded_source_lists_its_collections_and_the_demo_ones(tmp_path):
    request = request_for(tmp_path, "crm")
    with EmbeddedChangeStreamSource(request.source_location) as source:
        DemoWorkload(source, "crm", "leads", initial_documents=2).run(0)
        DemoWorkload(source, "other", "ignored", initial_documents=2).run(0)
    demo = sorted(ns.split(".", 1)[1] for ns in DEMO_COLLECTIONS if ns.startswith("crm."))
    assert list_collections(request) == sorted({"leads", *demo})


def test_the_handler_answers_with_the_sorted_names(tmp_path):
    request = request_for(tmp_path, "crm")
    with EmbeddedChangeStreamSource(request.source_location) as source:
        for name in ("leads", "accounts"):
            DemoWorkload(source, "crm", name, initial_documents=1).run(0)
    reply = handler(request.to_event(), None)
    assert reply["database"] == "crm"
    assert {"accounts", "leads"} <= set(reply["collections"])
    assert reply["collections"] == sorted(reply["collections"])


def test_a_discovery_request_covers_a_whole_database(tmp_path):
    event = {**request_for(tmp_path, "crm").to_event(), "collection": "leads"}
    with pytest.raises(InvalidRequestError, match="collection must be '\\*'"):
        DiscoveryRequest.from_event(event)
    with pytest.raises(InvalidRequestError, match="database"):
        DiscoveryRequest.from_event({**event, "collection": "*", "database": "has space"})
    with pytest.raises(InvalidRequestError, match="NAME of an environment variable"):
        DiscoveryRequest.from_event(
            {
                **event,
                "collection": "*",
                "source_kind": "documentdb",
                "source_location": "mongodb://user:pw@host",
            }
        )
