"""Repositories in a bucket, end to end: a real S3 API server (moto, in server mode) on 127.0.0.1,
real clipperd processes started as users start them, tritonclient as the client."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.pymodels import adds, config_text, index, infer
from tests.server.storage.s3server import MotoServer, listing, put, put_folder
from tests.serverproc import EXAMPLES, ROOT, free_port, running, wait_until

pytestmark = pytest.mark.timeout(240)

WAIT = 30.0
NO_FOLDER = Path("/nonexistent")  # ServerProcess's folder argument: the URL is given in its place
POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "1")


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials as users give them (the environment), and nothing from this machine's own AWS
    files, profiles, endpoints or instance metadata."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def cache_args(tmp_path: Path) -> tuple[str, str]:
    return ("--repository-cache-dir", str(tmp_path / "cache"))


def new_bucket(moto: MotoServer, name: str) -> Any:
    s3 = moto.client()
    s3.create_bucket(Bucket=name)
    return s3


def put_model(s3: Any, bucket: str, prefix: str, name: str, versions: dict[int, int]) -> None:
    put(s3, bucket, f"{prefix}/{name}/config.pbtxt", config_text(name))
    for version, n in versions.items():
        put(s3, bucket, f"{prefix}/{name}/{version}/model.py", adds(n))


def identity_answers(client: grpcclient.InferenceServerClient) -> bool:
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity_fp32", [tensor], client_timeout=WAIT)
    return bool(np.array_equal(result.as_numpy("OUTPUT0"), data))


class Hammer(threading.Thread):
    """Asks ``model`` (its latest version) one request after another; every answer must come from
    a whole version: its delta equals the version that answered."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.answers: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            while not self.done.is_set():
                try:
                    self.answers.append(infer(client, self.model, 100))
                except Exception as error:
                    self.errors.append(f"{type(error).__name__}: {error}")
                time.sleep(0.01)

    def stop(self) -> None:
        self.done.set()
        self.join(WAIT)


def test_a_bucket_is_served_and_followed_in_poll_mode(moto: MotoServer, tmp_path: Path, logs_dir: Path) -> None:
    s3 = new_bucket(moto, "models")
    uploaded = put_folder(s3, "models", "repo/identity_fp32", EXAMPLES / "identity_fp32")
    put_model(s3, "models", "repo", "p", {1: 1})
    before = listing(s3, "models")
    url = f"s3://127.0.0.1:{moto.port}/models/repo"  # Triton's custom-endpoint form (HTTP)
    with running(NO_FOLDER, *POLL, *cache_args(tmp_path), log_dir=logs_dir, url=url) as server:
        with grpcclient.InferenceServerClient(server.url) as client:
            assert identity_answers(client)
            assert infer(client, "p", 10) == (1, "1")
            hammer = Hammer(server.url, "p")
            hammer.start()
            try:
                # a new version, uploaded while serving: loaded at a poll
                put(s3, "models", "repo/p/2/model.py", adds(2))
                wait_until(lambda: infer(client, "p", 10) == (2, "2"), "p version 2 serving", WAIT)
                # a version still uploading: files keep arriving, scan after scan; never loaded
                for part in range(25):
                    put(s3, "models", f"repo/p/3/weights-{part}.bin", b"w" * part)
                    assert ("p", "3") not in index(client), "a version whose listing changes was loaded"
                    assert infer(client, "p", 10) == (2, "2")
                    time.sleep(0.1)
                # the upload stops, lacking model.py: taken, it fails to load; version 2 serves on
                wait_until(lambda: index(client).get(("p", "3"), ("",))[0] == "UNAVAILABLE", "p 3 tried", WAIT)
                assert infer(client, "p", 10) == (2, "2")
                assert index(client)[("p", "2")][0] == "READY"
                # the last file: version 3 serves
                put(s3, "models", "repo/p/3/model.py", adds(3))
                wait_until(lambda: infer(client, "p", 10) == (3, "3"), "p version 3 serving", WAIT)
            finally:
                hammer.stop()
        assert "model 'p' version 3: changing in the bucket" in server.log()
    assert not hammer.errors, hammer.errors[:3]
    assert len(hammer.answers) > 50
    assert all(delta == int(version) for delta, version in hammer.answers)  # never half a version
    # the server never wrote to the bucket: the keys are the test's own uploads, unchanged
    after = listing(s3, "models")
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"repo/p/2/model.py", "repo/p/3/model.py"} | {
        f"repo/p/3/weights-{i}.bin" for i in range(25)
    }
    assert set(uploaded) <= set(before)


def test_explicit_mode_lists_the_bucket_again_on_a_load(moto: MotoServer, tmp_path: Path, logs_dir: Path) -> None:
    s3 = new_bucket(moto, "explicit")
    put_model(s3, "explicit", "r", "base", {1: 1})
    url = f"s3://127.0.0.1:{moto.port}/explicit/r"
    args = ("--model-control-mode", "explicit", "--repository-settle-secs", "0.5", *cache_args(tmp_path))
    with (
        running(NO_FOLDER, *args, log_dir=logs_dir, url=url) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        assert not client.is_model_ready("base")  # explicit: nothing loaded unless asked
        put_model(s3, "explicit", "r", "q", {1: 1})  # uploaded after the start
        client.load_model("q")
        assert infer(client, "q", 10) == (1, "1")
        put(s3, "explicit", "r/q/2/model.py", adds(2))
        client.load_model("q")
        assert infer(client, "q", 10) == (2, "2")
        with pytest.raises(Exception, match="not in the model repository"):
            client.load_model("nothing_here")


def test_aws_endpoint_url_a_warm_cache_and_one_server_per_cache(
    moto: MotoServer, tmp_path: Path, logs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = new_bucket(moto, "by-env")
    put_folder(s3, "by-env", "identity_fp32", EXAMPLES / "identity_fp32")  # at the bucket's root
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)  # the standard variable: s3://bucket as for AWS
    url = "s3://by-env"
    with running(NO_FOLDER, *cache_args(tmp_path), log_dir=logs_dir, url=url) as server:
        with grpcclient.InferenceServerClient(server.url) as client:
            assert identity_answers(client)
        assert ": 2 objects, 2 downloaded" in server.log()
        # a second server on the same cache folder is refused, in one line
        refused = failed_start(url, *cache_args(tmp_path))
        assert "in use by another clipperd" in refused
    with running(NO_FOLDER, *cache_args(tmp_path), log_dir=logs_dir, url=url) as server:  # warm: nothing downloaded
        with grpcclient.InferenceServerClient(server.url) as client:
            assert identity_answers(client)
        assert ": 2 objects, 0 downloaded (0 bytes)" in server.log()


def failed_start(url: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Starts clipperd on ``url``, which must fail: exit 2, one error line, no traceback. That line."""
    command = [sys.executable, "-m", "server.cli", "serve", "--model-repository", url, "--host", "127.0.0.1"]
    ports = ("--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")
    environment = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [*command, *ports, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_start_errors_are_one_line(moto: MotoServer, tmp_path: Path, logs_dir: Path) -> None:
    new_bucket(moto, "exists")
    cache = cache_args(tmp_path)
    missing = failed_start(f"s3://127.0.0.1:{moto.port}/no-such-bucket/repo", *cache)
    assert f"bucket 'no-such-bucket' does not exist at http://127.0.0.1:{moto.port}" in missing
    closed = free_port()
    unreachable = failed_start(f"s3://127.0.0.1:{closed}/exists/repo", *cache)
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{closed}" in unreachable
    no_keys = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    anonymous = failed_start(f"s3://127.0.0.1:{moto.port}/exists/repo", *cache, env=no_keys)
    assert "no usable AWS credentials" in anonymous


def test_bad_credentials_are_refused_at_start(tmp_path: Path, logs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks credentials once its initial unauthenticated calls (here the set-up's 4) are used."""
    auth = MotoServer(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="4")
    try:
        auth.client().create_bucket(Bucket="locked")
        iam = auth.client("iam")
        iam.create_user(UserName="reader")
        policy = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=policy)
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        url = f"s3://127.0.0.1:{auth.port}/locked/repo"
        wrong = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        refused = failed_start(url, *cache_args(tmp_path), env=wrong)
        assert "access to bucket 'locked'" in refused
        assert "refused (SignatureDoesNotMatch)" in refused
        unknown = failed_start(url, *cache_args(tmp_path), env={"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN"})
        assert "refused (InvalidAccessKeyId)" in unknown
        assert "not-the-secret" not in refused  # no secret in a log line
        # the right keys: the same start succeeds (an empty repository)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        with running(NO_FOLDER, *cache_args(tmp_path), log_dir=logs_dir, url=url) as server:
            assert "0 objects" in server.log()
    finally:
        auth.stop()
