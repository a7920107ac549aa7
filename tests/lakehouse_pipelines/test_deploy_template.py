from pathlib import Path

import yaml
from cfnlint.api import lint_all

from lakehouse_pipelines.deploy_template import DEFAULT_RESERVED_CONCURRENCY, render_yaml
from lakehouse_pipelines.resources.pipes_messages import PIPES_MESSAGE_PREFIX
from lambda_functions.registry import FUNCTIONS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_committed_template_is_the_rendering_of_the_registry():
    assert (DEPLOY / "template.yaml").read_text() == render_yaml(), (
        "regenerate: python -m lakehouse_pipelines.deploy_template > deploy/template.yaml"
    )


def test_every_registered_function_is_deployed_with_its_settings():
    template = yaml.safe_load(render_yaml())
    deployed = {
        r["Properties"]["FunctionName"]: r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    }
    assert set(deployed) == set(FUNCTIONS)
    for name, spec in FUNCTIONS.items():
        props = deployed[name]
        assert props["ImageConfig"]["Command"] == [spec.handler]
        assert (props["Timeout"], props["MemorySize"]) == (spec.timeout_s, spec.memory_mb)
        assert props["PackageType"] == "Image"  # deltalake + pyarrow exceed the zip limit


def test_template_passes_cfn_lint_without_errors_or_warnings():
    problems = [m for m in lint_all(render_yaml()) if m.rule.id[0] in ("E", "W")]
    assert not problems, "\n".join(str(p) for p in problems)


def test_dagster_pool_stays_below_reserved_concurrency():
    instance_settings = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert instance_settings["concurrency"]["pools"]["default_limit"] < DEFAULT_RESERVED_CONCURRENCY


def test_pipes_messages_expire_under_the_prefix_the_reader_uses():
    """Messages a crash leaves behind are expired by S3 (the reader deletes the others)."""
    template = yaml.safe_load(render_yaml())
    bucket = template["Resources"]["PipesMessagesBucket"]
    assert bucket["Type"] == "AWS::S3::Bucket"
    (rule,) = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Prefix"] == f"{PIPES_MESSAGE_PREFIX}/"
    assert rule["ExpirationInDays"] >= 1  # S3's smallest expiration is one day
    assert template["Outputs"]["PipesBucketName"]["Value"] == {"Ref": "PipesMessagesBucket"}


def test_functions_may_write_pipes_messages_only_under_their_prefix():
    template = yaml.safe_load(render_yaml())
    statements = template["Resources"]["FunctionRole"]["Properties"]["Policies"][0][
        "PolicyDocument"
    ]["Statement"]
    pipes = [s for s in statements if any("PipesMessagesBucket" in str(r) for r in s["Resource"])]
    assert [s["Action"] for s in pipes] == [["s3:PutObject"]]
    assert pipes[0]["Resource"][0]["Fn::Sub"].endswith(f"/{PIPES_MESSAGE_PREFIX}/*")
