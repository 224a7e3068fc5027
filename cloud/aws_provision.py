"""``smartfarm cloud provision-device --aws``: an edge becomes an AWS IoT thing, with a certificate
made by AWS IoT (key written 0600) and a least-privilege policy, and learns its endpoint.

The policy is one for the whole fleet (created when missing): its resources name the connecting
thing through policy variables (``${iot:Connection.Thing.ThingName}`` and the thing's ``farm_id``
attribute), so a certificate only lets its own thing connect under its own client id, publish on
its own batches and replies topics and receive its own acks and commands topics — the defaults of
the edge's ``[cloud.aws_iot]`` topics (edge/config.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from shared.errors import SmartfarmError
from shared.topics import is_valid_id

log = logging.getLogger(__name__)

DEFAULT_POLICY: Final = "smartfarm-edge"
DEFAULT_REGION: Final = "us-east-1"
DEFAULT_OUT: Final = Path("credentials/aws-iot")
CERT_FILE: Final = "certificate.pem.crt"
KEY_FILE: Final = "private.pem.key"
FARM_ATTRIBUTE: Final = "farm_id"
# The thing's topics as the policy sees them; edge/config.py AwsIotConfig has the same defaults.
THING: Final = "${iot:Connection.Thing.ThingName}"
FARM: Final = "${iot:Connection.Thing.Attributes[" + FARM_ATTRIBUTE + "]}"
TOPIC_ROOT: Final = f"smartfarm/{FARM}/edge/{THING}"
PUBLISHES: Final = ("batches", "replies")
RECEIVES: Final = ("acks", "commands")
_POLICY_NAME = re.compile(r"^[\w+=,.@-]{1,128}$")


class ProvisionError(SmartfarmError):
    """AWS IoT refused or could not be reached; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Provisioned:
    thing_name: str
    thing_arn: str
    certificate_id: str
    certificate_arn: str
    policy_name: str
    policy_created: bool
    endpoint: str
    cert_file: Path
    key_file: Path


def policy_document(region: str, account: str) -> dict[str, Any]:
    """The fleet policy: each thing only as itself, only on its own topics."""
    arn = f"arn:aws:iot:{region}:{account}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/{THING}",
                # Only a certificate attached to a registered thing names one.
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [f"{arn}:topic/{TOPIC_ROOT}/{name}" for name in PUBLISHES],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [f"{arn}:topicfilter/{TOPIC_ROOT}/{name}" for name in RECEIVES],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [f"{arn}:topic/{TOPIC_ROOT}/{name}" for name in RECEIVES],
            },
        ],
    }


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # an existing file (--force) keeps its old mode otherwise


def _thing(iot: Any, device_id: str, farm_id: str) -> str:
    """The thing's ARN, created with its farm attribute when missing."""
    try:
        found = iot.describe_thing(thingName=device_id)
    except iot.exceptions.ResourceNotFoundException:
        made = iot.create_thing(
            thingName=device_id, attributePayload={"attributes": {FARM_ATTRIBUTE: farm_id}}
        )
        log.info("created thing %s", device_id)
        return str(made["thingArn"])
    farm = found.get("attributes", {}).get(FARM_ATTRIBUTE)
    if farm != farm_id:
        raise ProvisionError(
            f"thing {device_id} already exists with {FARM_ATTRIBUTE}={farm!r}, not {farm_id!r}"
        )
    return str(found["thingArn"])


def _policy(iot: Any, sts: Any, name: str, region: str) -> bool:
    """True if the policy was created now; an existing one is used as it is."""
    try:
        iot.get_policy(policyName=name)
        return False
    except iot.exceptions.ResourceNotFoundException:
        pass
    account = sts.get_caller_identity()["Account"]
    iot.create_policy(policyName=name, policyDocument=json.dumps(policy_document(region, account)))
    log.info("created policy %s", name)
    return True


def provision_device(
    iot: Any,
    sts: Any,
    device_id: str,
    farm_id: str,
    *,
    region: str,
    policy_name: str = DEFAULT_POLICY,
    out: Path = DEFAULT_OUT,
    force: bool = False,
) -> Provisioned:
    """Thing, certificate (files 0600 in ``out``), policy attached; the data endpoint."""
    for label, value in (("device id", device_id), ("farm id", farm_id)):
        if not is_valid_id(value):
            raise ProvisionError(f"{label} {value!r}: use letters, digits, '_' or '-'")
    if not _POLICY_NAME.match(policy_name):
        raise ProvisionError(f"policy name {policy_name!r} is not a valid IoT policy name")
    cert_file, key_file = out / CERT_FILE, out / KEY_FILE
    existing = [str(p) for p in (cert_file, key_file) if p.exists()]
    if existing and not force:
        raise ProvisionError(f"{', '.join(existing)} exist(s): use --force to replace them")
    try:
        thing_arn = _thing(iot, device_id, farm_id)
        created = _policy(iot, sts, policy_name, region)
        endpoint = str(iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"])
        cert = iot.create_keys_and_certificate(setAsActive=True)
    except NoCredentialsError:
        raise ProvisionError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        ) from None
    except (ClientError, BotoCoreError) as exc:
        raise ProvisionError(f"AWS IoT: {exc}") from None
    cert_arn, cert_id = str(cert["certificateArn"]), str(cert["certificateId"])
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_secret(key_file, cert["keyPair"]["PrivateKey"])
        _write_secret(cert_file, cert["certificatePem"])
        iot.attach_policy(policyName=policy_name, target=cert_arn)
        iot.attach_thing_principal(thingName=device_id, principal=cert_arn)
    except (OSError, ClientError, BotoCoreError) as exc:
        _discard(iot, cert_arn, cert_id, policy_name, (cert_file, key_file))
        raise ProvisionError(f"certificate {cert_id[:12]}… discarded: {exc}") from None
    return Provisioned(device_id, thing_arn, cert_id, cert_arn, policy_name, created, endpoint,
                       cert_file, key_file)


def _discard(iot: Any, arn: str, cert_id: str, policy: str, files: tuple[Path, ...]) -> None:
    """Undo a half-made certificate: no active credential without its key on disk."""
    for path in files:
        with contextlib.suppress(OSError):
            path.unlink()
    for step, kwargs in (
        ("detach_policy", {"policyName": policy, "target": arn}),
        ("update_certificate", {"certificateId": cert_id, "newStatus": "INACTIVE"}),
        ("delete_certificate", {"certificateId": cert_id}),
    ):
        try:
            getattr(iot, step)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            log.debug("cleanup %s failed: %s", step, exc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device_id", metavar="DEVICE_ID", help="the edge id (the thing name)")
    parser.add_argument("--aws", action="store_true", required=True,
                        help="provision as an AWS IoT Core thing (the only kind for now)")
    parser.add_argument("--farm", required=True, help="the edge's farm id (a thing attribute)")
    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help=f"IoT policy to attach, created if missing (default {DEFAULT_POLICY})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the certificate and key (default {DEFAULT_OUT})")
    parser.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION,"
                                         f" else {DEFAULT_REGION})")
    parser.add_argument("--force", action="store_true", help="replace existing key files")


def provision_main(args: argparse.Namespace) -> int:
    """Run the subcommand: credentials and region from the environment (or --region)."""
    import boto3  # here: the other cloud commands need not load it

    region = (args.region or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
    session = boto3.session.Session(region_name=region)
    done = provision_device(
        session.client("iot"), session.client("sts"), args.device_id, args.farm,
        region=region, policy_name=args.policy, out=args.out, force=args.force,
    )
    policy = f"{done.policy_name} ({'created' if done.policy_created else 'existing'})"
    print(f"thing {done.thing_name} (farm {args.farm}) in {region}: certificate"
          f" {done.certificate_id[:12]}… active, policy {policy}")
    print(f"  certificate: {done.cert_file} (mode 0600)")
    print(f"  private key: {done.key_file} (mode 0600; shown nowhere else, keep it safe)")
    print(f"endpoint: {done.endpoint}")
    print("\nedge config (edge.toml):\n[cloud.aws_iot]\nenabled = true")
    print(f'endpoint = "{done.endpoint}"\nclient_id = "{done.thing_name}"')
    print(f'cert_file = "{done.cert_file.resolve()}"\nkey_file = "{done.key_file.resolve()}"')
    return 0
