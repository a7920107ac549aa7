import pytest

from lambda_functions.contracts import InvalidRequestError
from lambda_functions.errors import TerminalError, TransientError, error_kind
from lambda_functions.lake.record_key import InvalidRecordKeyError
from lambda_functions.warehouse_load.redshift import (
    RedshiftSerializationError,
    RedshiftStatementError,
    RedshiftTimeoutError,
)
from lambda_functions.warehouse_sql import PlanError, UnsafeSqlValueError


@pytest.mark.parametrize(
    ("error", "kind", "builtin"),
    [
        (InvalidRequestError, TerminalError, ValueError),
        (InvalidRecordKeyError, TerminalError, ValueError),
        (PlanError, TerminalError, ValueError),
        (UnsafeSqlValueError, TerminalError, ValueError),
        (RedshiftStatementError, TerminalError, RuntimeError),
        (RedshiftSerializationError, TransientError, RuntimeError),
        (RedshiftTimeoutError, TransientError, TimeoutError),
    ],
)
def test_load_and_contract_errors_have_one_kind_and_keep_their_builtin_base(error, kind, builtin):
    other = TransientError if kind is TerminalError else TerminalError
    assert issubclass(error, kind) and issubclass(error, builtin)
    assert not issubclass(error, other)
    assert error_kind(error.__name__) == ("terminal" if kind is TerminalError else "transient")
