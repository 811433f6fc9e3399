"""The CLI's one error path (`zwsi.errors.run_command`): a user error is exactly one stderr line and exit code 2."""

from __future__ import annotations

import pytest
import yaml

from zwsi.errors import EXIT_USER_ERROR, run_command


def test_a_multi_line_message_is_printed_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def job(text: str) -> int:
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as exc:  # PyYAML's messages carry the offending line and a caret on their own lines
            raise ValueError(f"c.yaml is not valid YAML: {exc}") from exc
        return 0

    assert run_command("generate", job, "batch_size: [1\n") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zwsi generate: c.yaml is not valid YAML: while parsing a flow ")


def test_a_bug_keeps_its_traceback() -> None:
    def job(_: object) -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_command("x", job, None)
