"""`carbonedge flower`: credentials are required and never put on the command line."""

from __future__ import annotations

import pytest

from carbonedge.errors import ConfigError
from carbonedge.ops.flower import check_basic_auth, flower_argv


@pytest.mark.parametrize("value", ["", "admin", "admin:", ":pw", "a b:pw", "admin:pw,oops"])
def test_bad_credentials_are_refused(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_basic_auth(value)
    assert e.value.field == "flower_basic_auth"


def test_good_credentials_pass() -> None:
    assert check_basic_auth("admin:s3cret") == "admin:s3cret"
    assert check_basic_auth("a:1,b:2") == "a:1,b:2"


def test_argv_binds_where_asked_and_carries_no_password() -> None:
    argv = flower_argv("127.0.0.1", 5599)
    assert argv[0] == "flower" and "--address=127.0.0.1" in argv and "--port=5599" in argv
    assert not any("auth" in a for a in argv)
