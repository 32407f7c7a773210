"""The Verdicts page's generator (conformance/peers/verdicts.py), without the peers.

The peers (timm, torch-optimizer, optax) are not in the test environment:
`make verdicts` installs them and writes docs/results/verdicts.json. Here the
generator renders a small saved JSON (tests/fixtures/verdicts_small.json)
whose cells cover each case the page must show: passes with and without a
measured error, failures counted or not, a failure no cause explains, a cause
whose check passed, a cited source line that changed or was not read, a peer
that was skipped. And the committed page must be exactly what the generator
makes of the committed JSON, with no gap in the causes.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from lookahead_conformance import CHECKS, protocol_violations

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "conformance" / "peers"
SMALL = Path(__file__).parent / "fixtures" / "verdicts_small.json"
COMMITTED_JSON = ROOT / "docs" / "results" / "verdicts.json"
COMMITTED_PAGE = ROOT / "docs" / "verdicts.md"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, PEERS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verdicts = _load("verdicts")


@pytest.fixture(scope="module")
def small():
    data = json.loads(SMALL.read_text(encoding="utf-8"))
    text, problems = verdicts.render(data)
    return data, text, problems


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _row(section: str, first_cell: str) -> list[str]:
    (line,) = [l for l in section.splitlines() if l.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_the_page_names_the_date_and_every_version(small):
    data, text, _ = small
    assert text.startswith("# Verdicts\n")
    assert "Generated on 2026-01-02 by `make verdicts`" in text
    assert "seed 0, max examples 25" in text
    assert "| timm (`timm.optim.Lookahead`) | 1.0.31, on torch 2.13.0+cpu |" in text
    assert "| optax (`optax.lookahead`) | 0.2.8, on jax 0.10.2, jaxlib 0.10.2 |" in text
    assert "| Python | 3.11.7 |" in text
    assert "| lookahead-optimizer (the kit) | 0.1.0, `CHECKS_VERSION` 2 |" in text


def test_the_matrix_has_a_row_per_peer_and_a_column_per_check(small):
    data, text, _ = small
    matrix = _section(text, "## The matrix")
    header = _row(matrix, "peer")
    assert header[1:] == list(data["checks"])
    assert _row(matrix, "timm")[1:] == ["FAIL (4/8 cases)", "pass (1.9 eps)", "FAIL (1/6 cases)", "FAIL"]
    assert _row(matrix, "optax")[1:] == ["FAIL", "pass (1.9 eps)", "FAIL", "n/a"]
    assert _row(matrix, "torch-optimizer")[1:] == ["skipped"] * 4
    # the rule of each check, with a pipe in it that must not split the cell
    assert "| `reference` | Agreement with the reference ¦ lookahead_core |" in matrix


def test_each_peer_has_a_section_with_verdict_failures_and_cause(small):
    _, text, _ = small
    timm = _section(text, "## timm 1.0.31")
    schedule = _row(timm, "`schedule`")
    assert schedule[1] == "FAIL (4/8 cases)"
    # the first failing cases, escaped for a table; the rest counted
    assert schedule[2].split("<br>") == [
        "`float32 k=3 alpha=0.5: the slow weights follow ¦ the fast weights`",
        "`float64 k=3 alpha=0.5: 'slow' moved`",
        "and 2 more in the JSON",
    ]
    assert schedule[3].startswith("The slow buffer is made at the first sync")
    assert schedule[3].endswith("(`timm/optim/lookahead.py` 45, 47)")
    memory = _row(timm, "`memory`")  # a kit JSON without counted cases: its detail
    assert memory[1:3] == ["FAIL", "`float32: Lookahead holds 0 bytes after construction`"]
    optax = _section(text, "## optax 0.2.8")
    assert _row(optax, "`reference`")[1:] == ["pass (1.9 eps)", "", ""]
    assert _row(optax, "`memory`")[1] == "n/a"
    assert "skipped: torch-optimizer not installed" in _section(text, "## torch-optimizer 0.3.0")


def test_gaps_in_the_causes_are_shown_and_returned(small):
    _, text, problems = small
    found = {(p.peer, p.check, p.what.split(" ")[0]) for p in problems}
    assert ("optax", "schedule", "a") in found  # a failure with no cause
    assert ("timm", "reference", "a") in found  # a cause recorded for a pass
    assert any(p.peer == "timm" and "lookahead.py:49 no longer reads" in p.what for p in problems)
    assert any(p.peer == "optax" and "was not read in this run" in p.what for p in problems)
    assert len(problems) == 6
    assert "**no cause recorded**: a new failure" in _row(_section(text, "## optax 0.2.8"), "`schedule`")[3]
    timm = _section(text, "## timm 1.0.31")
    assert "**a cause is recorded but the check did not fail**" in _row(timm, "`reference`")[3]
    assert "49 (**the line changed: re-read the source**)" in _row(timm, "`edge_cases`")[3]
    assert '!!! warning "Gaps in the causes"' in text
    assert "    - optax, `schedule`: a failure with no cause recorded" in text


def test_page_writes_the_file_and_exits_1_on_gaps_0_without(tmp_path, small, capsys):
    data, text, _ = small
    out = tmp_path / "verdicts.md"
    assert verdicts.main(["page", str(SMALL), str(out)]) == 1
    assert out.read_text(encoding="utf-8") == text
    assert "verdicts: optax::schedule: a failure with no cause recorded" in capsys.readouterr().err

    clean = json.loads(json.dumps(data))
    clean["peers"] = [clean["peers"][2]]  # only the skipped peer: nothing to explain
    path = tmp_path / "clean.json"
    path.write_text(json.dumps(clean), encoding="utf-8")
    assert verdicts.main(["page", str(path), str(out)]) == 0
    assert "Gaps in the causes" not in out.read_text(encoding="utf-8")


def test_causes_name_known_peers_and_checks_and_quote_their_line():
    names = {peer.name for peer in verdicts.PEERS}
    for (peer, check), cause in verdicts.CAUSES.items():
        assert peer in names and check in CHECKS, (peer, check)
        assert cause.text and cause.sources, (peer, check)
        for source in cause.sources:
            assert source.line >= 1 and source.quote and not source.path.startswith("/"), source
    for peer, check in verdicts.NOTES:
        assert peer in names and check in CHECKS, (peer, check)


def test_the_peer_backends_import_without_their_libraries_and_follow_the_protocol(monkeypatch):
    monkeypatch.syspath_prepend(str(PEERS_DIR))
    for peer in verdicts.PEERS:
        module_name, _, attr = peer.backend.partition(":")
        backend = getattr(_load(module_name), attr)
        assert protocol_violations(backend) == [], peer.name
        assert backend.name == peer.name


def test_the_peer_backends_are_not_packaged():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    packages = re.search(r"^packages = \[(.*)\]$", text, re.M).group(1)
    assert "peers" not in packages and "conformance/peers" not in text


def test_the_committed_page_is_what_the_generator_makes_of_the_committed_json():
    data = json.loads(COMMITTED_JSON.read_text(encoding="utf-8"))
    text, problems = verdicts.render(data)
    assert COMMITTED_PAGE.read_text(encoding="utf-8") == text, (
        "docs/verdicts.md is stale: run `make verdicts` (or `python conformance/peers/verdicts.py "
        "page docs/results/verdicts.json docs/verdicts.md`)")
    assert problems == []
    assert [peer["name"] for peer in data["peers"]] == [peer.name for peer in verdicts.PEERS]
    assert all(peer["status"] == "ran" for peer in data["peers"])
    assert list(data["checks"]) == list(CHECKS)
