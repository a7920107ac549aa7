"""The contract's error name lists match the error classes of every stage.

A Lambda function error reaches Dagster as ``{"errorType": <class name>, ...}`` only (AWS Lambda
Developer Guide, "AWS Lambda function errors in Python"), so the retry decision
(``lambda_functions.errors.error_kind``) rests on the names listed in ``errors.py``: every
``TransientError``/``TerminalError`` subclass must be listed under its kind, nothing else may be,
and no two product error classes may share a name. The local stand-ins (``lakehouse_local``) count:
their errors cross the local Lambda runtime's boundary by name too (the embedded source is read
inside the capture function).
"""

from __future__ import annotations

import importlib
import pkgutil

import lakehouse_local
import lakehouse_pipelines
import lambda_functions
from lambda_functions.errors import (
    TERMINAL_ERROR_TYPES,
    TRANSIENT_ERROR_TYPES,
    LakehouseError,
    TerminalError,
    TransientError,
    error_kind,
)


def _all_subclasses(base: type) -> list[type]:
    found, pending = [], list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


# Built from the modules below at import (it reads the environment): it defines no error class.
_NOT_IMPORTED = {"lakehouse_pipelines.definitions"}


def _import_every_data_plane_module() -> None:
    """Every module of the data plane, of the local stand-ins and of the Dagster side, whose errors get kinds too."""
    for package in (lambda_functions, lakehouse_local, lakehouse_pipelines):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if module.name not in _NOT_IMPORTED:
                importlib.import_module(module.name)


def test_every_error_class_is_listed_under_its_kind_and_nothing_else_is():
    _import_every_data_plane_module()
    product = [
        cls
        for cls in _all_subclasses(LakehouseError)
        if cls.__module__.startswith(("lambda_functions", "lakehouse_local", "lakehouse_pipelines"))
    ]
    transient = {cls.__name__ for cls in product if issubclass(cls, TransientError)}
    terminal = {cls.__name__ for cls in product if issubclass(cls, TerminalError)}
    assert not transient & terminal, f"errors of both kinds: {sorted(transient & terminal)}"
    assert transient - {"TransientError"} == set(TRANSIENT_ERROR_TYPES)
    assert terminal - {"TerminalError"} == set(TERMINAL_ERROR_TYPES)
    names = [cls.__name__ for cls in product]
    assert len(names) == len(set(names)), "two product error classes share a name"
    for name in TRANSIENT_ERROR_TYPES:
        assert error_kind(name) == "transient"
    for name in TERMINAL_ERROR_TYPES:
        assert error_kind(name) == "terminal"
    assert error_kind("ZeroDivisionError") == "unknown"
    assert error_kind("TooManyRequestsException") == "transient"
