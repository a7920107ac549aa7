"""IAM policy pieces the deploy template's roles share: trust policies and the lake's statements.

The Lambda functions' role (``deploy_template``) and the ECS task's role (``deploy_ecs``) grant the
same access to the lake prefix; it is written here once. Every helper returns a new dict, so the
rendered YAML holds no anchors or aliases (PyYAML writes ``&id001`` for an object met twice).

AWS documentation relied on: IAM User Guide, "IAM JSON policy elements reference" (``Version``
2012-10-17, ``Statement``, ``Condition``) and "Controlling access to a bucket with user policies"
(``s3:ListBucket`` restricted by the ``s3:prefix`` condition key).
"""

from __future__ import annotations

from typing import Any

POLICY_VERSION = "2012-10-17"


def lake_bucket_arn() -> dict[str, Any]:
    """The lake bucket's ARN, a CloudFormation ``Fn::Sub`` of ``LakeBucketName``."""
    return {"Fn::Sub": "arn:${AWS::Partition}:s3:::${LakeBucketName}"}


def lake_objects_arn() -> dict[str, Any]:
    """The ARN pattern of every object under the lake prefix (``LakeBucketName``/``LakePrefix``)."""
    return {"Fn::Sub": "arn:${AWS::Partition}:s3:::${LakeBucketName}/${LakePrefix}*"}


def assume_role_policy(service: str) -> dict[str, Any]:
    """A role's trust policy letting one AWS service assume it.

    Args:
        service: the service principal, e.g. ``"lambda.amazonaws.com"``.

    Returns:
        The ``AssumeRolePolicyDocument`` of an ``AWS::IAM::Role``.
    """
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ],
    }


def inline_policy(name: str, statements: list[dict[str, Any]]) -> dict[str, Any]:
    """One entry of an ``AWS::IAM::Role``'s ``Policies``.

    Args:
        name: the policy's name (``PolicyName``), unique within the role.
        statements: the policy's statements, in order.

    Returns:
        ``{"PolicyName": name, "PolicyDocument": {"Version": ..., "Statement": statements}}``.
    """
    return {
        "PolicyName": name,
        "PolicyDocument": {"Version": POLICY_VERSION, "Statement": statements},
    }


def lake_statements() -> list[dict[str, Any]]:
    """List the lake prefix, and read, write and delete the objects under it: what capture, merge,
    maintenance and load do in the lake, and nothing more.

    Returns:
        Two policy statements: ``s3:ListBucket`` on the bucket limited to ``LakePrefix*``, then
        ``s3:GetObject``/``PutObject``/``DeleteObject`` on the prefix's objects.
    """
    return [
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [lake_bucket_arn()],
            "Condition": {"StringLike": {"s3:prefix": [{"Fn::Sub": "${LakePrefix}*"}]}},
        },
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": [lake_objects_arn()],
        },
    ]
