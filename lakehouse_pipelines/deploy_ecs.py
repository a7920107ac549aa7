"""The ECS route's part of the deploy template: cluster, Fargate task definition, roles, log group.

Kept apart from ``deploy_template`` (which renders the Lambda functions) so the route can be read,
and changed, on its own; ``deploy_template.render_template`` merges these blocks in.

- Cluster: the template creates one (Fargate capacity providers) unless ``EcsClusterName`` names
  an existing cluster.
- Task definition: the functions' image (``ImageUri``), its Lambda entry point replaced with
  ``python -m lambda_functions.ecs_task`` (AWS CloudFormation User Guide,
  "AWS::ECS::TaskDefinition ContainerDefinition": ``EntryPoint``, ``Command``), awsvpc networking
  as Fargate requires, stdout to CloudWatch Logs through the ``awslogs`` driver: that is where
  ``PipesECSClient``'s reader finds the Pipes messages (stream ``ecs/<container>/<task id>``).
- Task role, least privilege: what the merge and capture handlers do and nothing more -- list and
  read/write/delete the lake prefix, read the DocumentDB secret. Messages travel through the log,
  so no Pipes bucket access; no Redshift access (loads stay on Lambda).
- Execution role: ECS's own (pull the image, write the log), AWS's managed
  ``AmazonECSTaskExecutionRolePolicy`` (Amazon ECS Developer Guide, "Task execution IAM role").

The outputs are what the orchestrator's ``LAKEHOUSE_ECS_*`` variables must be set to
(``lakehouse_pipelines.resources.ecs_pipes.EcsRouteSettings``).
"""

from __future__ import annotations

from typing import Any

from lakehouse_pipelines.deploy_iam import assume_role_policy, inline_policy, lake_statements
from lakehouse_pipelines.resources.ecs_pipes import DEFAULT_CONTAINER_NAME

TASK_COMMAND = ["python", "-m", "lambda_functions.ecs_task"]
TASK_FAMILY = "lakehouse-data-plane-task"
LOG_RETENTION_DAYS = 30
LOG_STREAM_PREFIX = "ecs"  # the reader expects streams named <prefix>/<container>/<task id>
# Fargate CPU units and memory (MiB) of a task; one of Fargate's supported pairs (Amazon ECS
# Developer Guide, "Task CPU and memory"): 4 vCPU with 16-30 GB.
DEFAULT_TASK_CPU = "4096"
DEFAULT_TASK_MEMORY = "30720"


def ecs_parameters() -> dict[str, Any]:
    """Template parameters of the ECS route."""
    return {
        "EcsClusterName": {
            "Type": "String",
            "Default": "",
            "Description": "an existing ECS cluster for the route's Fargate tasks; empty: create one",
        },
        "EcsTaskCpu": {"Type": "String", "Default": DEFAULT_TASK_CPU},
        "EcsTaskMemory": {
            "Type": "String",
            "Default": DEFAULT_TASK_MEMORY,
            "Description": "MiB; must pair with EcsTaskCpu as Fargate allows",
        },
    }


def ecs_conditions() -> dict[str, Any]:
    return {"CreateEcsCluster": {"Fn::Equals": [{"Ref": "EcsClusterName"}, ""]}}


def ecs_resources(metrics_environment: dict[str, Any]) -> dict[str, Any]:
    """The route's resources.

    Args:
        metrics_environment: the container's environment variables (name -> CloudFormation
            value), the same the functions are configured with.

    Returns:
        Logical id -> resource, to merge into the template's ``Resources``.
    """
    return {
        "EcsCluster": {
            "Type": "AWS::ECS::Cluster",
            "Condition": "CreateEcsCluster",
            "Properties": {
                "CapacityProviders": ["FARGATE", "FARGATE_SPOT"],
                "DefaultCapacityProviderStrategy": [{"CapacityProvider": "FARGATE", "Weight": 1}],
            },
        },
        "EcsTaskLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {"RetentionInDays": LOG_RETENTION_DAYS},
        },
        "EcsTaskExecutionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role_policy("ecs-tasks.amazonaws.com"),
                "ManagedPolicyArns": [
                    {
                        "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                        "AmazonECSTaskExecutionRolePolicy"
                    }
                ],
            },
        },
        "EcsTaskRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": assume_role_policy("ecs-tasks.amazonaws.com"),
                "Policies": [
                    inline_policy(
                        "lakehouse-ecs-task",
                        [
                            *lake_statements(),
                            {
                                "Effect": "Allow",
                                "Action": ["secretsmanager:GetSecretValue"],
                                "Resource": [
                                    {"Ref": "DocumentDbSecretArn"},
                                    # the masking key, for collections captured on ECS
                                    {
                                        "Fn::If": [
                                            "HasMaskingKey",
                                            {"Ref": "MaskingKeySecretArn"},
                                            {"Ref": "AWS::NoValue"},
                                        ]
                                    },
                                ],
                            },
                        ],
                    )
                ],
            },
        },
        "EcsTaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "Family": TASK_FAMILY,
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                "Cpu": {"Ref": "EcsTaskCpu"},
                "Memory": {"Ref": "EcsTaskMemory"},
                "RuntimePlatform": {
                    "OperatingSystemFamily": "LINUX",
                    "CpuArchitecture": "X86_64",
                },
                "ExecutionRoleArn": {"Fn::GetAtt": ["EcsTaskExecutionRole", "Arn"]},
                "TaskRoleArn": {"Fn::GetAtt": ["EcsTaskRole", "Arn"]},
                "ContainerDefinitions": [
                    {
                        "Name": DEFAULT_CONTAINER_NAME,
                        "Image": {"Ref": "ImageUri"},
                        "Essential": True,
                        "EntryPoint": TASK_COMMAND[:1],
                        "Command": TASK_COMMAND[1:],
                        # Lambda sets AWS_REGION for its functions; a task gets it here
                        "Environment": [
                            {"Name": name, "Value": value}
                            for name, value in sorted(
                                {
                                    **metrics_environment,
                                    "AWS_REGION": {"Ref": "AWS::Region"},
                                }.items()
                            )
                        ],
                        "LogConfiguration": {
                            "LogDriver": "awslogs",
                            "Options": {
                                "awslogs-group": {"Ref": "EcsTaskLogGroup"},
                                "awslogs-region": {"Ref": "AWS::Region"},
                                "awslogs-stream-prefix": LOG_STREAM_PREFIX,
                            },
                        },
                    }
                ],
            },
        },
    }


def ecs_outputs() -> dict[str, Any]:
    """Template outputs: the values of the orchestrator's ``LAKEHOUSE_ECS_*`` variables."""
    return {
        "EcsClusterName": {
            "Description": "set LAKEHOUSE_ECS_CLUSTER to this",
            "Value": {
                "Fn::If": ["CreateEcsCluster", {"Ref": "EcsCluster"}, {"Ref": "EcsClusterName"}]
            },
        },
        "EcsTaskDefinitionArn": {
            "Description": "set LAKEHOUSE_ECS_TASK_DEFINITION to this (and "
            f"LAKEHOUSE_ECS_CONTAINER_NAME to {DEFAULT_CONTAINER_NAME}); the orchestrator needs "
            "ecs:RunTask/DescribeTasks/StopTask/DescribeTaskDefinition and iam:PassRole on the "
            "task's two roles",
            "Value": {"Ref": "EcsTaskDefinition"},
        },
        "EcsLogGroupName": {
            "Description": "set LAKEHOUSE_ECS_LOG_GROUP to this; the orchestrator needs "
            "logs:DescribeLogStreams and logs:GetLogEvents on it",
            "Value": {"Ref": "EcsTaskLogGroup"},
        },
    }


def add_ecs_route(template: dict[str, Any], metrics_environment: dict[str, Any]) -> None:
    """Merge the ECS route's parameters, condition, resources and outputs into ``template``."""
    template["Parameters"].update(ecs_parameters())
    template.setdefault("Conditions", {}).update(ecs_conditions())
    template["Resources"].update(ecs_resources(metrics_environment))
    template["Outputs"].update(ecs_outputs())
