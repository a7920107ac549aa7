"""The stand-ins' errors have one kind each, keep their builtin base and are named in the
contract (``lambda_functions.errors``)."""

from __future__ import annotations

import pytest

from lakehouse_local.embedded_source import EmbeddedSourceLimitError
from lakehouse_local.lambda_runtime import LocalRuntimeClosedError, LocalRuntimeConfigurationError
from lambda_functions.cdc_capture.change_source import EmbeddedSourceUnavailableError
from lambda_functions.errors import TERMINAL_ERROR_TYPES, TerminalError, TransientError, error_kind


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (EmbeddedSourceLimitError, ValueError),
        (EmbeddedSourceUnavailableError, ImportError),
        (LocalRuntimeClosedError, RuntimeError),
        (LocalRuntimeConfigurationError, ValueError),
    ],
)
def test_stand_in_errors_are_terminal_and_keep_their_builtin_base(error, builtin) -> None:
    assert issubclass(error, TerminalError) and issubclass(error, builtin)
    assert not issubclass(error, TransientError)
    assert error.__name__ in TERMINAL_ERROR_TYPES
    assert error_kind(error.__name__) == "terminal"
