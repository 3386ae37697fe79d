"""The package's errors cross a DataLoader worker's boundary with their type and message: torch
re-raises a worker's error in the main process as ``type(error)(text)`` (torch/_utils.py,
ExceptionWrapper.reraise), and as a RuntimeError when the type cannot be built from one string."""

from __future__ import annotations

import inspect
import pickle
import sys
from pathlib import Path

import pytest
from torch._utils import ExceptionWrapper

from resumable_loader import errors
from resumable_loader.index.file import IndexVersionError

ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ResumableLoaderError) and cls.__module__ == errors.__name__
]


def a_storage_error() -> errors.StorageError:
    return errors.StorageError(
        url="s3://bucket/shard-0001.tar",
        start=1024,
        length=512,
        attempts=9,
        elapsed=120.3,
        reason="GenericError: error sending request",
        sample=1739,
    )


def an_index_version_error() -> IndexVersionError:
    header = {"version": 1, "shards": [{"url": "s3://b/a.tar"}], "on_error": "skip"}
    return IndexVersionError(Path("/cache/a.tar.0123.rlindex"), header)


def examples() -> list[errors.ResumableLoaderError]:
    """One error of each of the package's types, built as the package builds it."""
    plain = [cls(f"{cls.__name__}: what failed and the fix") for cls in ERRORS]
    built = [a_storage_error(), an_index_version_error()]
    return [e for e in plain if type(e) is not errors.StorageError] + built


def reraised_in_main(error: BaseException) -> BaseException:
    """``error`` after the trip a DataLoader worker's error makes: wrapped in the worker,
    re-raised in the main process."""
    try:
        raise error
    except type(error):
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 1")
    with pytest.raises(BaseException) as caught:
        wrapper.reraise()
    return caught.value


def test_every_error_type_is_listed() -> None:
    assert errors.StorageError in ERRORS and errors.ConfigError in ERRORS and len(ERRORS) >= 10


@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_an_error_of_a_worker_keeps_its_type_and_message(error) -> None:
    got = reraised_in_main(error)
    assert type(got) is type(error)
    assert "in DataLoader worker process 1" in str(got)
    assert str(error) in str(got)  # the worker's message, within its traceback


@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_an_error_survives_pickling(error) -> None:
    got = pickle.loads(pickle.dumps(error))
    assert type(got) is type(error) and str(got) == str(error)


def test_a_storage_error_keeps_its_fields_through_pickling() -> None:
    got = pickle.loads(pickle.dumps(a_storage_error()))
    assert (got.url, got.start, got.length, got.sample) == (
        "s3://bucket/shard-0001.tar",
        1024,
        512,
        1739,
    )
    assert "bytes [1024, 1536) (sample 1739)" in str(got) and "deadline" in str(got)
