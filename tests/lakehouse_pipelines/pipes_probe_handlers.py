"""Lambda handlers used by the Pipes integration tests (run by the local Lambda runtime)."""

import time

from lambda_functions.pipes import open_pipes

INVOCATIONS = 0  # survives between invocations in a warm worker, as in a warm Lambda container


def noisy(event, context):
    """Logs well over 4 KB before, inside and after the Pipes block."""
    global INVOCATIONS
    INVOCATIONS += 1
    print("before " + "x" * 6000, flush=True)
    with open_pipes(event) as pipes:
        for i in range(80):
            pipes.log.info(f"progress {i} " + "y" * 60)
        pipes.report_asset_materialization(
            metadata={
                "answer": {"raw_value": 42, "type": "int"},
                "warm_invocations": {"raw_value": INVOCATIONS, "type": "int"},
            }
        )
        pipes.report_asset_check(check_name="probe_check", passed=True)
    print("after " + "z" * 6000, flush=True)
    return {"ok": True}


def failing(event, context):
    with open_pipes(event):
        raise ValueError("document 42 has no _id")


def slow(event, context):
    with open_pipes(event) as pipes:
        pipes.log.info("starting a long step")
        time.sleep(30)


def per_collection(event, context):
    """Reports which collection it handled; the check fails for collection 'c13'."""
    with open_pipes(event) as pipes:
        time.sleep(0.2)
        collection = event["collection"]
        pipes.report_asset_materialization(
            metadata={"collection": {"raw_value": collection, "type": "text"}}
        )
        pipes.report_asset_check(
            check_name="probe_check",
            passed=collection != "c13",
            metadata={"figure": {"raw_value": len(collection), "type": "int"}},
        )


def region(event, context):
    """Reports the region its environment says it runs in."""
    import os

    with open_pipes(event) as pipes:
        pipes.report_asset_materialization(
            metadata={"region": {"raw_value": os.environ["AWS_REGION"], "type": "text"}}
        )
        pipes.report_asset_check(check_name="probe_check", passed=True)


class ProbeThrottledError(Exception):
    """Listed as transient by the retry tests (they patch ``errors.TRANSIENT_ERROR_TYPES``)."""


class ProbeBadInputError(Exception):
    """Listed as terminal by the retry tests (they patch ``errors.TERMINAL_ERROR_TYPES``)."""


def throttled(event, context):
    with open_pipes(event):
        raise ProbeThrottledError("the table is locked by another writer; try again later")


def bad_input(event, context):
    with open_pipes(event):
        raise ProbeBadInputError("collection c1 has no such field; fix the projection")


def bad_input_for_c1(event, context):
    """Fails terminally for collection c1, transiently for c2, succeeds for the others."""
    with open_pipes(event) as pipes:
        if event["collection"] == "c1":
            raise ProbeBadInputError("collection c1 has no such field; fix the projection")
        if event["collection"] == "c2":
            raise ProbeThrottledError("throttled")
        pipes.report_asset_materialization(metadata={})
