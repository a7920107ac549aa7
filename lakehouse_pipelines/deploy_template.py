"""Render the AWS SAM template for the Lambda functions from the function registry.

The template is generated, never edited by hand, so function names, handlers, timeouts and memory
are the ones the local runtime and ``LambdaPipes`` use. All functions ship as one container image
(deltalake + pyarrow exceed Lambda's 250 MB zip limit); each function picks its handler with
``ImageConfig.Command``. The role grants only what the handlers do: read/write the lake prefix,
write Pipes messages, put metrics in the pipeline's namespace, read the DocumentDB secret.

Pipes messages get their own bucket (output ``PipesBucketName``: set ``LAKEHOUSE_PIPES_BUCKET`` to
it). The orchestrator deletes each invocation's messages once read; the bucket's lifecycle rule
expires whatever a crash leaves under ``_dagster_pipes/`` after ``PIPES_MESSAGE_EXPIRY_DAYS``.

    python -m lakehouse_pipelines.deploy_template > deploy/template.yaml
"""

import copy
from typing import Any

import yaml

from lakehouse_pipelines.deploy_ecs import add_ecs_route
from lakehouse_pipelines.deploy_iam import assume_role_policy, inline_policy, lake_statements
from lakehouse_pipelines.resources.pipes_messages import PIPES_MESSAGE_PREFIX
from lambda_functions.registry import FUNCTIONS, FunctionSpec, function_environment

DEFAULT_RESERVED_CONCURRENCY = 8  # keep the Dagster pool (deploy/dagster.yaml) below this
# Days after which S3 expires Pipes message objects the orchestrator did not delete (the smallest
# lifecycle expiration S3 accepts is one day).
PIPES_MESSAGE_EXPIRY_DAYS = 1


def pipes_messages_bucket() -> dict[str, Any]:
    """The Pipes messages bucket: private, encrypted, messages expired by a lifecycle rule."""
    return {
        "Type": "AWS::S3::Bucket",
        "Properties": {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                ]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "LifecycleConfiguration": {
                "Rules": [
                    {
                        "Id": "ExpirePipesMessages",
                        "Status": "Enabled",
                        "Prefix": f"{PIPES_MESSAGE_PREFIX}/",
                        "ExpirationInDays": PIPES_MESSAGE_EXPIRY_DAYS,
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                    }
                ]
            },
        },
    }


# The deployed value of every variable a FunctionSpec may list in ``environment`` (the local
# runtime takes the same names' values from the settings: resources.local_function_values).
VARIABLE_VALUES: dict[str, Any] = {
    "LAKEHOUSE_METRICS_NAMESPACE": {"Ref": "MetricsNamespace"},
    "LAKEHOUSE_LAKE_URI": {"Fn::Sub": "s3://${LakeBucketName}/${LakePrefix}"},
    # PII masking: the rules (the MQ function's; the others get them in their requests) and
    # the secret holding the HMAC key. The key itself is never a variable on AWS.
    "LAKEHOUSE_MASKING": {"Ref": "MaskingRules"},
    "LAKEHOUSE_MASKING_KEY_SECRET_ARN": {"Ref": "MaskingKeySecretArn"},
    "LAKEHOUSE_MASKING_KEY": "",
    "LAKEHOUSE_MERGE_SEGMENT_BYTES": {"Ref": "MergeSegmentBytes"},
}


def _logical_id(spec: FunctionSpec) -> str:
    return "".join(part.capitalize() for part in spec.name.split("-")) + "Function"


def render_template() -> dict[str, Any]:
    pipes_objects = {
        "Fn::Sub": f"arn:${{AWS::Partition}}:s3:::${{PipesMessagesBucket}}/{PIPES_MESSAGE_PREFIX}/*"
    }
    resources: dict[str, Any] = {
        "PipesMessagesBucket": pipes_messages_bucket(),
        "FunctionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role_policy("lambda.amazonaws.com"),
                "ManagedPolicyArns": [
                    {
                        "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                        "AWSLambdaBasicExecutionRole"
                    }
                ],
                "Policies": [
                    inline_policy(
                        "lakehouse-data-plane",
                        [
                            *lake_statements(),
                            {
                                "Effect": "Allow",
                                "Action": ["s3:PutObject"],
                                "Resource": [pipes_objects],
                            },
                            {
                                "Effect": "Allow",
                                "Action": ["cloudwatch:PutMetricData"],
                                "Resource": "*",
                                "Condition": {
                                    "StringEquals": {
                                        "cloudwatch:namespace": {"Ref": "MetricsNamespace"}
                                    }
                                },
                            },
                            {
                                "Effect": "Allow",
                                "Action": ["secretsmanager:GetSecretValue"],
                                "Resource": [
                                    {"Ref": "DocumentDbSecretArn"},
                                    {"Ref": "RedshiftSecretArn"},
                                    # the masking key (capture and ingest functions)
                                    {
                                        "Fn::If": [
                                            "HasMaskingKey",
                                            {"Ref": "MaskingKeySecretArn"},
                                            {"Ref": "AWS::NoValue"},
                                        ]
                                    },
                                ],
                            },
                            {
                                "Effect": "Allow",
                                "Action": [
                                    "redshift-data:BatchExecuteStatement",
                                    "redshift-data:ExecuteStatement",
                                ],
                                "Resource": [{"Ref": "RedshiftResourceArn"}],
                            },
                            {
                                # Only statements this role submitted.
                                "Effect": "Allow",
                                "Action": [
                                    "redshift-data:DescribeStatement",
                                    "redshift-data:GetStatementResult",
                                    "redshift-data:CancelStatement",
                                ],
                                "Resource": "*",
                                "Condition": {
                                    "StringEquals": {
                                        # an IAM policy variable, not a template one
                                        "redshift-data:statement-owner-iam-userid": (
                                            "${aws:userid}"
                                        )
                                    }
                                },
                            },
                            {
                                "Effect": "Allow",
                                "Action": [
                                    "redshift-serverless:GetCredentials",
                                    "redshift:GetClusterCredentials",
                                    "redshift:GetClusterCredentialsWithIAM",
                                ],
                                "Resource": [{"Ref": "RedshiftResourceArn"}],
                            },
                        ],
                    )
                ],
            },
        },
    }
    for spec in FUNCTIONS.values():
        resources[_logical_id(spec)] = {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "FunctionName": spec.name,
                "Description": spec.description,
                "PackageType": "Image",
                "ImageUri": {"Ref": "ImageUri"},
                "ImageConfig": {"Command": [spec.handler]},
                "Timeout": int(spec.timeout_s),
                "MemorySize": spec.memory_mb,
                "ReservedConcurrentExecutions": {"Ref": "ReservedConcurrency"},
                "Role": {"Fn::GetAtt": ["FunctionRole", "Arn"]},
                "Environment": {
                    "Variables": copy.deepcopy(function_environment(spec, VARIABLE_VALUES))
                },
            },
        }
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": "lakehouse_pipelines data plane: the Lambda functions Dagster invokes "
        "through Pipes (generated by lakehouse_pipelines/deploy_template.py; do not edit).",
        "Parameters": {
            "ImageUri": {
                "Type": "String",
                "Description": "ECR image built from deploy/Dockerfile",
            },
            "LakeBucketName": {"Type": "String"},
            "LakePrefix": {"Type": "String", "Default": "lake/"},
            "MetricsNamespace": {"Type": "String", "Default": "Lakehouse/Pipelines"},
            "DocumentDbSecretArn": {
                "Type": "String",
                "Description": "Secrets Manager secret with the DocumentDB credentials",
            },
            "RedshiftResourceArn": {
                "Type": "String",
                "Description": "the Redshift Serverless workgroup or provisioned cluster ARN",
            },
            "RedshiftSecretArn": {
                "Type": "String",
                "Description": "Secrets Manager secret for Redshift (provisioned clusters), "
                "or the DocumentDB secret again if unused",
            },
            "MaskingRules": {
                "Type": "String",
                "Default": "",
                "Description": "LAKEHOUSE_MASKING for the MQ function: PII masking rules per "
                "collection as JSON (README, PII masking)",
            },
            "MaskingKeySecretArn": {
                "Type": "String",
                "Default": "",
                "Description": "Secrets Manager secret holding the PII masking HMAC key "
                "(SecretString, at least 32 bytes); empty when no rule hashes a field",
            },
            "MergeSegmentBytes": {
                "Type": "String",
                "Default": "",
                "Description": "LAKEHOUSE_MERGE_SEGMENT_BYTES for the merge function: batch "
                "bytes per Delta commit; empty: its memory / 16",
            },
            "ReservedConcurrency": {
                "Type": "Number",
                "Default": DEFAULT_RESERVED_CONCURRENCY,
                "Description": "per function; keep the Dagster lakehouse_lambda pool below it",
            },
        },
        "Conditions": {
            "HasMaskingKey": {"Fn::Not": [{"Fn::Equals": [{"Ref": "MaskingKeySecretArn"}, ""]}]}
        },
        "Resources": resources,
        "Outputs": {
            "FunctionRoleArn": {"Value": {"Fn::GetAtt": ["FunctionRole", "Arn"]}},
            "PipesBucketName": {
                "Description": "set LAKEHOUSE_PIPES_BUCKET to this; the orchestrator needs "
                f"s3:GetObject and s3:DeleteObject on {PIPES_MESSAGE_PREFIX}/* in it and "
                "s3:ListBucket on it",
                "Value": {"Ref": "PipesMessagesBucket"},
            },
        },
    }
    add_ecs_route(template, function_environment(FUNCTIONS["lakehouse-merge"], VARIABLE_VALUES))
    return template


def render_yaml() -> str:
    return yaml.safe_dump(render_template(), sort_keys=False, width=100)


if __name__ == "__main__":
    print(render_yaml(), end="")
