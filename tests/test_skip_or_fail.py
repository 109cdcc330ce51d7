"""tests/skip_or_fail.py: a missing prerequisite skips on a developer's machine and fails in CI."""

import pytest

from skip_or_fail import skip_or_fail  # tests/ is on sys.path (rootdir conftest)


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_in_ci_a_missing_prerequisite_fails(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)  # the environment .ci/run gives, not a stand-in for our code
    with pytest.raises(pytest.fail.Exception, match="needs sshd .*CI=true"):
        skip_or_fail("needs sshd")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_elsewhere_it_skips(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="needs sshd"):
        skip_or_fail("needs sshd")
