"""The data plane: one handler module per AWS Lambda function and the libraries they share.

This package is what gets deployed to Lambda. It depends on ``dagster-pipes`` and never on
``dagster``; tests import it with Dagster absent to keep that true.
"""
