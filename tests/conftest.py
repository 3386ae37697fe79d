"""Fixtures shared by several test modules."""

# The S3 test server and the fault proxy in front of it (tests of object storage).
from fault_proxy import fault_proxy  # noqa: F401
from s3_server import s3_env, s3_server  # noqa: F401
