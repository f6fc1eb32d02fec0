"""Store tests use the moto S3 server from tests/conftest.py."""

from tests.conftest import BUCKET

__all__ = ["BUCKET"]
