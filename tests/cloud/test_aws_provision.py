"""``smartfarm cloud provision-device --aws`` against moto's AWS IoT (no network, dummy
credentials): thing, certificate, key files 0600, the fleet policy, the endpoint."""

from __future__ import annotations

import json
import logging
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from moto import mock_aws

from cloud.aws_provision import (
    DEFAULT_POLICY,
    FARM,
    THING,
    ProvisionError,
    policy_document,
    provision_device,
)
from cloud.cli import cloud_main
from edge.config import IOT_TOPICS, AwsIotConfig
from edge.iot_uplink import AUTH_PROPERTY, ENCODING_PROPERTY

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def own_logging() -> Iterator[None]:
    """cloud_main configures logging onto the (captured) stdout: put the root logger back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


def clients() -> tuple[Any, Any]:
    return boto3.client("iot", region_name=REGION), boto3.client("sts", region_name=REGION)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_makes_thing_certificate_policy_and_prints_the_endpoint(
    aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "aws-iot"
    code = cloud_main(["provision-device", "--aws", "edge-7", "--farm", "farm-a",
                       "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    iot, _ = clients()
    # The ATS data endpoint (moto makes up a new prefix per call), for the edge config as well.
    found = re.search(r"^endpoint: ([a-z0-9]+-ats\.iot\.us-east-1\.amazonaws\.com)$", printed,
                      re.MULTILINE)
    assert found is not None, printed
    assert f'endpoint = "{found.group(1)}"' in printed
    assert "[cloud.aws_iot]" in printed and 'client_id = "edge-7"' in printed

    thing = iot.describe_thing(thingName="edge-7")
    assert thing["attributes"] == {"farm_id": "farm-a"}
    (cert_arn,) = iot.list_thing_principals(thingName="edge-7")["principals"]
    attached = iot.list_attached_policies(target=cert_arn)["policies"]
    assert [p["policyName"] for p in attached] == [DEFAULT_POLICY]
    cert_id = cert_arn.rsplit("/", 1)[1]
    described = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert described["status"] == "ACTIVE"

    # The files: 0600, the certificate AWS IoT holds, and the key that goes with it.
    cert_file, key_file = out / "certificate.pem.crt", out / "private.pem.key"
    assert mode(cert_file) == 0o600 and mode(key_file) == 0o600 and mode(out) == 0o700
    assert cert_file.read_text() == described["certificatePem"]
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.PEM, public) == \
        key.public_key().public_bytes(serialization.Encoding.PEM, public)


def test_the_policy_is_least_privilege_for_the_edges_own_topics(
    aws: None, tmp_path: Path
) -> None:
    iot, sts = clients()
    done = provision_device(iot, sts, "edge-1", "farm-a", region=REGION, out=tmp_path / "a")
    assert done.policy_created
    document = json.loads(iot.get_policy(policyName=DEFAULT_POLICY)["policyDocument"])
    assert document == policy_document(REGION, "123456789012")
    by_action = {s["Action"]: s for s in document["Statement"]}
    assert set(by_action) == {"iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive"}
    assert all(s["Effect"] == "Allow" for s in document["Statement"])
    assert "*" not in json.dumps(document)  # no wildcard anywhere

    # Resolved for a thing, the policy grants exactly the edge's default topics.
    def grants(action: str, thing: str, farm: str) -> set[str]:
        resources = by_action[action]["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        return {r.replace(THING, thing).replace(FARM, farm).split(":", 5)[5]
                for r in resources}

    cfg = AwsIotConfig()
    mine = {name: cfg.topic(name, "farm-a", "edge-1") for name in IOT_TOPICS}
    assert grants("iot:Connect", "edge-1", "farm-a") == {"client/edge-1"}
    assert grants("iot:Publish", "edge-1", "farm-a") == \
        {f"topic/{mine['batches']}", f"topic/{mine['replies']}"}
    assert grants("iot:Subscribe", "edge-1", "farm-a") == \
        {f"topicfilter/{mine['acks']}", f"topicfilter/{mine['commands']}"}
    assert grants("iot:Receive", "edge-1", "farm-a") == \
        {f"topic/{mine['acks']}", f"topic/{mine['commands']}"}
    assert by_action["iot:Connect"]["Condition"] == \
        {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}

    # A second edge shares the policy (not created again) with its own thing and certificate.
    other = provision_device(iot, sts, "edge-2", "farm-b", region=REGION, out=tmp_path / "b")
    assert not other.policy_created and other.certificate_arn != done.certificate_arn
    assert iot.describe_thing(thingName="edge-2")["attributes"] == {"farm_id": "farm-b"}


def test_an_existing_policy_is_attached_as_it_is(aws: None, tmp_path: Path) -> None:
    iot, sts = clients()
    mine = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/x"}]}
    iot.create_policy(policyName="site-policy", policyDocument=json.dumps(mine))
    done = provision_device(iot, sts, "edge-1", "farm-a", region=REGION,
                            policy_name="site-policy", out=tmp_path)
    assert not done.policy_created
    assert json.loads(iot.get_policy(policyName="site-policy")["policyDocument"]) == mine
    names = [p["policyName"] for p in iot.list_attached_policies(target=done.certificate_arn)
             ["policies"]]
    assert names == ["site-policy"]


def test_refusals_leave_nothing_behind(aws: None, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    iot, sts = clients()
    provision_device(iot, sts, "edge-1", "farm-a", region=REGION, out=tmp_path / "a")
    # The key files are there: not overwritten without --force.
    with pytest.raises(ProvisionError, match="--force"):
        provision_device(iot, sts, "edge-1", "farm-a", region=REGION, out=tmp_path / "a")
    # The thing belongs to another farm.
    with pytest.raises(ProvisionError, match="farm_id='farm-a'"):
        provision_device(iot, sts, "edge-1", "farm-b", region=REGION, out=tmp_path / "b")
    with pytest.raises(ProvisionError, match="device id"):
        provision_device(iot, sts, "edge/1", "farm-a", region=REGION, out=tmp_path / "c")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert len(iot.list_certificates()["certificates"]) == 1
    # --force makes a new certificate; the thing now has both (the old one stays until revoked).
    again = provision_device(iot, sts, "edge-1", "farm-a", region=REGION, out=tmp_path / "a",
                             force=True)
    assert mode(again.key_file) == 0o600
    assert len(iot.list_thing_principals(thingName="edge-1")["principals"]) == 2
    # Through the CLI, a refusal is one line on stderr and exit code 1.
    code = cloud_main(["provision-device", "--aws", "edge-1", "--farm", "farm-a",
                       "--out", str(tmp_path / "a")])
    assert code == 1 and "--force" in capsys.readouterr().err


def test_without_credentials_the_cli_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    # No shared config or IMDS lookups from here: nothing but the environment.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = cloud_main(["provision-device", "--aws", "edge-1", "--farm", "farm-a",
                       "--out", str(tmp_path / "out")])
    assert code == 1
    assert "no AWS credentials" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_only_aws_is_supported(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cloud_main(["provision-device", "edge-1", "--farm", "farm-a"])
    assert exc.value.code == 2 and "--aws" in capsys.readouterr().err


# ---- deploy/aws ---------------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "aws"


def test_the_shipped_policy_is_the_one_provisioning_creates() -> None:
    shipped = json.loads((DEPLOY / "iot-policy.json").read_text())
    assert shipped == policy_document("REGION", "ACCOUNT_ID")


def test_the_topic_rules_are_valid_and_forward_what_the_edge_sends(aws: None) -> None:
    iot, _ = clients()
    cfg = AwsIotConfig()
    for name, kind, path in (("smartfarm_edge_batches", "batches", "/api/edge/v1/batches"),
                             ("smartfarm_edge_replies", "replies", "/api/edge/v1/pending")):
        text = (DEPLOY / f"topic-rule-{kind}.json").read_text().replace("ACCOUNT_ID",
                                                                        "123456789012")
        payload = json.loads(text)
        # botocore checks the document against the CreateTopicRule shape.
        iot.create_topic_rule(ruleName=name, topicRulePayload=payload)
        rule = iot.get_topic_rule(ruleName=name)["rule"]
        # The SQL's topic filter matches the edge's default topic for this kind.
        topic = cfg.topic(kind, "farm-a", "edge-1")  # type: ignore[arg-type]
        pattern = re.search(r"FROM '([^']+)'", rule["sql"])
        assert pattern is not None
        regex = "^" + re.escape(pattern.group(1)).replace(r"\+", "[^/]+") + "$"
        assert re.match(regex, topic), (regex, topic)
        (action,) = payload["actions"]
        assert action["http"]["url"].endswith(path)
        headers = {h["key"].lower(): h["value"] for h in action["http"]["headers"]}
        assert headers["content-type"] == "application/json"
        assert headers["authorization"] == f"${{get_user_property('{AUTH_PROPERTY}')}}"
        if kind == "batches":
            assert headers["content-encoding"] == \
                f"${{get_user_property('{ENCODING_PROPERTY}')}}"
            error = payload["errorAction"]["republish"]["topic"]
            assert error.replace("${topic(2)}", "farm-a").replace("${topic(4)}", "edge-1") == \
                cfg.topic("acks", "farm-a", "edge-1")
