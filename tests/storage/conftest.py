"""A moto S3 server on 127.0.0.1 (real HTTP, real conditional writes) for the store tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

BUCKET = "kit-test-bucket"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of a moto server with one bucket, for the whole test session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    assert server._server is not None
    url = f"http://127.0.0.1:{server._server.server_port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def _fake_aws_credentials() -> Iterator[None]:
    """moto accepts any credentials; make sure boto3 finds some and never real ones."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "kit-test")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "kit-test")
    mp.delenv("AWS_PROFILE", raising=False)
    yield
    mp.undo()
