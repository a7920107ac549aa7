"""Local stand-ins for AWS Lambda and DocumentDB; never shipped to AWS.

``embedded_source`` plays DocumentDB (a file-backed change-stream source), ``demo_workload`` plays
the application that changes it, and ``lambda_runtime`` plays the AWS Lambda service behind
``boto3.client("lambda").invoke``. The Lambda image (``deploy/Dockerfile``) copies only
``lambda_functions/``; ``lambda_functions`` imports this package in one place only, lazily
(``cdc_capture.change_source.open_source`` for ``source_kind == "embedded"``).
"""
