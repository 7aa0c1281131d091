"""The test suite's own machinery: the `real_data` marker that separates the unit tests from the tests on shared
data, and the in-process runner of the `bertkit` command."""

from __future__ import annotations

from types import SimpleNamespace

import conftest
import pytest
from helpers import run_in_process


def test_the_data_folder_is_the_shared_one(data_dir) -> None:
    assert (data_dir / "README.md").is_file() and (data_dir / "pretrain_zh").is_dir()


def test_every_test_reaching_the_shared_data_is_marked_and_no_other(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    marked = {item.nodeid for item in items if item.get_closest_marker("real_data")}
    reaching = {item.nodeid for item in items if "data_dir" in item.fixturenames}
    assert marked == reaching
    assert request.node.nodeid not in marked
    # The test above is here and marked, or was deselected by `-m 'not real_data'`, which only the marker can do.
    data_test = request.node.nodeid.rsplit("::", 1)[0] + "::test_the_data_folder_is_the_shared_one"
    deselected = data_test not in {item.nodeid for item in items} and "real_data" in request.config.option.markexpr
    assert data_test in marked or deselected


def test_without_the_data_those_tests_are_skipped_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def item(*fixtures: str) -> SimpleNamespace:
        markers: list[pytest.Mark] = []
        return SimpleNamespace(fixturenames=list(fixtures), markers=markers,
                               add_marker=lambda m: markers.append(m.mark))  # fmt: skip

    via_fixture, unit = item("tmp_path", "tiny_zh_pretrained", "data_dir"), item("tmp_path", "minilm_dir")
    monkeypatch.setenv("BERTKIT_DATA", "/nonexistent")
    conftest.pytest_collection_modifyitems(None, [via_fixture, unit])  # type: ignore[arg-type]  # config: unused
    assert unit.markers == []
    assert [m.name for m in via_fixture.markers] == ["real_data", "skip"]
    reason = via_fixture.markers[1].kwargs["reason"]
    assert "real test data not found at /nonexistent" in reason and "-m 'not real_data'" in reason


def test_the_in_process_runner_returns_the_exit_status_and_what_was_printed() -> None:
    # Without capsys (as in a module-scoped fixture): standard output and error are redirected for the call.
    status, out, err = run_in_process("--version")  # argparse ends --version with SystemExit(0)
    assert (status, err) == (0, "") and out.startswith("bertkit ")
    result = run_in_process("fill-mask", "--model", "no/such/model", "--top-k", "0", "a [MASK]")
    assert result.status == 2 and result.out == "" and "argument --top-k" in result.err
