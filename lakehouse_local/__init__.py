"""Local stand-ins for AWS Lambda and DocumentDB; never shipped to AWS.

``embedded_source`` plays DocumentDB (a file-backed change-stream source), ``demo_workload`` the
application that changes it, ``lambda_runtime`` the AWS Lambda service behind boto3's ``invoke``.
The Lambda image (``deploy/Dockerfile``) copies only ``lambda_functions/``, which imports this
package in one place, lazily: ``cdc_capture.change_source.open_source`` for embedded sources.
"""
