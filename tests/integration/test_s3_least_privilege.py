"""The README's least-privilege S3 policy for recommenders, enforced by a real S3
API: moto's server with its IAM checks switched on (moto.core.authorization's
``enable_iam_authentication``; the server runs in this process, tests/s3.py).

The policy is read out of README.md itself, so the documented policy is the
one tested: a recommender holding it reads the whole root and serves from
it, writes its serving marker (and anything else under ``.serving/``), and
is refused when it writes a version, the pin or anything else.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from movierec_common import model_root
from movierec_common.artifact import VersionMetadata
from recommender_service.registry import SERVING, ModelRegistry
from recommender_service.validation import validate_version
from tests.artifacts import tiny_artifact
from tests.s3 import s3_server
from trainer_service.publisher import publish

README = Path(__file__).resolve().parents[2] / "README.md"
BUCKET, PREFIX = "models", "movierec"  # the README's example names
ROOT = f"s3://{BUCKET}/{PREFIX}"
ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}]}


def readme_policy() -> dict:
    """The JSON block of the README's trust section that follows the words 'recommender policy'."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"recommender policy.*?```json\n(.*?)```", text, re.S)
    assert found, "README.md has no recommender policy JSON block"
    return json.loads(found.group(1))


# The permission AWS checks -> the names moto 5 checks for the same calls (found by running this test).
MOTO_ACTION_NAMES = {"s3:ListBucket": ("s3:ListObjectsV2",), "s3:GetObject": ("s3:HeadObject",)}


def as_moto_checks_it(policy: dict) -> dict:
    """The policy as moto 5's IAM checks can evaluate it, allowing nothing more than AWS would.

    * moto knows no S3 condition keys (moto/iam/utils.py's
      format_incoming_conditional_values supplies only sts:ExternalId), so a
      statement with an ``s3:prefix`` condition never matches there; without
      it the listing is allowed on the whole bucket, a superset of AWS's;
    * moto checks some calls under the API call's own name where AWS checks
      another permission (:data:`MOTO_ACTION_NAMES`), so those names are
      added beside the permission AWS checks.

    What is refused below is therefore refused by the Resource parts alone.
    """
    statements = []
    for statement in policy["Statement"]:
        statement = {name: value for name, value in statement.items() if name != "Condition"}
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else list(statement["Action"])
        actions += [name for action in actions for name in MOTO_ACTION_NAMES.get(action, ())]
        statements.append({**statement, "Action": actions})
    return {**policy, "Statement": statements}


def iam_user(iam, name: str, policy: dict) -> dict[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def use_credentials(credentials: dict[str, str]) -> None:
    """Points this process (boto3, and s3fs after its instance cache is cleared) at other credentials."""
    import boto3
    import s3fs

    os.environ.update(credentials)
    boto3.DEFAULT_SESSION = None  # the default session keeps the credentials it first resolved
    s3fs.S3FileSystem.clear_instance_cache()


def denied(call, code: str = "AccessDenied") -> bool:
    """Whether the store refused the call with ``code`` (anything else raises)."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == code:
            return True
        raise
    return False


@pytest.fixture
def enforced_s3():
    from moto.core.authorization import enable_iam_authentication

    with s3_server(BUCKET):
        import boto3

        iam = boto3.client("iam")
        admin = iam_user(iam, "trainer", ADMIN)
        recommender = iam_user(iam, "recommender", as_moto_checks_it(readme_policy()))
        saved = {name: os.environ[name] for name in admin}
        try:
            with enable_iam_authentication():
                yield admin, recommender
        finally:
            use_credentials(saved)


def test_the_readme_recommender_policy_allows_serving_and_markers_and_nothing_else(enforced_s3, tmp_path):
    import boto3

    admin, recommender = enforced_s3
    use_credentials({"AWS_ACCESS_KEY_ID": "unknown", "AWS_SECRET_ACCESS_KEY": "nobody"})
    assert denied(lambda: boto3.client("s3").list_objects_v2(Bucket=BUCKET), "InvalidAccessKeyId"), "IAM is off"

    use_credentials(admin)  # the trainer: writes the whole root
    publish(ROOT, tiny_artifact(seed=1), VersionMetadata(model_kind="two_tower"))

    use_credentials(recommender)
    registry = ModelRegistry(ROOT, loader=validate_version, replica_id="r1", cache_dir=str(tmp_path / "cache"))
    try:
        registry.poll_once()  # lists, reads, copies and serves version 1; writes its serving marker
        assert registry.current() is not None and registry.status()[1][0].state == SERVING, registry.status()
        assert model_root.serving_replicas(ROOT) == {"r1": 1}
    finally:
        registry.stop()  # removes its marker: DeleteObject under .serving/ is allowed
    assert model_root.serving_replicas(ROOT) == {}

    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/.serving/rejected/r1-2.json", Body=b"{}")  # beside the markers
    for key in ("1/metadata.json", "1/saved_model.pb", "2/saved_model.pb", ".pin.json", ".serving.json",
                "r1.json", ".jobs/x.json"):
        assert denied(lambda key=key: s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=b"x")), key
    assert denied(lambda: s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/1/metadata.json"))
    assert denied(lambda: s3.put_object(Bucket=BUCKET, Key="elsewhere/x", Body=b"x"))
    with pytest.raises(model_root.RootAccessDenied):
        model_root.write_pin(ROOT, 1)  # through the product's own boundary: "not allowed", not "unreachable"
