"""The entry header of the remote backends: versions in, the same versions out."""

from __future__ import annotations

import pytest

from ormtune.backends._scheme import COUNTER_LIMIT, header, header_versions, pack


@pytest.mark.parametrize(
    "versions",
    [
        (),
        (0,),
        (pack(1, 0), pack(1, 7), pack(12, 3)),
        (pack(2**20, COUNTER_LIMIT), pack(0, COUNTER_LIMIT), pack(999_999, 1)),
    ],
)
def test_header_versions_reads_back_what_header_wrote(versions: tuple[int, ...]) -> None:
    assert header_versions(header(versions).encode()) == versions
