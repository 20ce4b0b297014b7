"""docs/configuration.md against the parser: the same keys, the same defaults, and a valid example."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from medseg_xdp import abi, config
from medseg_xdp.config import ConfigError
from medseg_xdp.policy_image import compile_policy

REFERENCE = Path(__file__).parent.parent / "docs" / "configuration.md"
HEADER = ["key", "type", "default", "meaning"]

# The section heading of each table, and its name in config.KEYS.
SECTIONS = {
    "[bridge]": "bridge",
    "[settings]": "settings",
    "[rails]": "rails",
    "[segments.NAME]": "segments",
    "[[rules]]": "rules",
    "[[pins]]": "pins",
    "[tables]": "tables",
    "[daemon]": "daemon",
    "[events]": "events",
}

# The smallest valid document that ends in the table, so that a key line appended to it lands there.
# Rules and pins need a segment to name, and required keys of their own.
MINIMAL = {
    "bridge": "[bridge]\n",
    "settings": "[settings]\n",
    "rails": "[rails]\n",
    "segments": "[segments.x]\n",
    "rules": '[segments.x]\n[[rules]]\nfrom = "x"\nto = "x"\naction = "allow"\n',
    "pins": '[segments.x]\n[[pins]]\nmac = "00:11:22:33:44:55"\nsegment = "x"\n',
    "tables": "[tables]\n",
    "daemon": "[daemon]\n",
    "events": "[events]\n",
}


@dataclass(frozen=True)
class Row:
    table: str
    key: str
    type: str
    default: str
    meaning: str


def _cells(line: str) -> list[str]:
    # a cell may hold an escaped pipe; only unescaped ones separate cells
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _sections(text: str) -> dict[str, str]:
    """Heading text -> the section's body, for every `## ` heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def _key_table(table: str, body: str) -> list[Row]:
    """The rows of the section's first table with the reference header."""
    lines = body.splitlines()
    start = next((number for number, line in enumerate(lines) if line.startswith("|") and _cells(line) == HEADER), None)
    assert start is not None, f"[{table}]: no table headed | key | type | default | meaning |"
    assert set(lines[start + 1].replace("|", "").strip()) <= set("-: "), f"[{table}]: the header's separator row is missing"
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == 4, f"[{table}]: a row needs 4 cells: {line}"
        key = re.fullmatch(r"`([A-Za-z_]+)`", cells[0])
        assert key, f"[{table}]: the key cell is the key in backticks: {cells[0]!r}"
        rows.append(Row(table, key.group(1), *cells[1:]))
    return rows


def reference_rows() -> dict[str, list[Row]]:
    sections = _sections(REFERENCE.read_text())
    return {table: _key_table(table, sections[heading]) for heading, table in SECTIONS.items() if heading in sections}


ROWS = reference_rows()
LITERAL = re.compile(r"`([^`]+)`")


def test_every_table_has_its_section() -> None:
    assert set(ROWS) == set(config.KEYS[""]), "docs/configuration.md needs a `## [table]` section for each top-level table, and no other"


@pytest.mark.parametrize("table", sorted(config.KEYS[""]))
def test_documented_keys_are_the_parsers(table: str) -> None:
    documented = [row.key for row in ROWS.get(table, [])]
    assert len(documented) == len(set(documented)), f"[{table}]: a key is documented twice"
    missing = config.KEYS[table] - set(documented)
    unknown = set(documented) - config.KEYS[table]
    assert not missing and not unknown, f"[{table}]: undocumented keys {sorted(missing)}, documented but not accepted {sorted(unknown)}"


ALL_ROWS = [row for rows in ROWS.values() for row in rows]


@pytest.mark.parametrize("row", ALL_ROWS, ids=[f"{row.table}.{row.key}" for row in ALL_ROWS])
def test_row_is_complete(row: Row) -> None:
    assert row.type and row.meaning, f"{row.table}.{row.key}: type and meaning must be filled in"
    assert row.default in ("required", "none") or LITERAL.fullmatch(row.default), (
        f"{row.table}.{row.key}: the default is a TOML literal in backticks, `required` or `none`, not {row.default!r}")


def _parse(table: str, line: str = "") -> config.Config:
    return config.parse(MINIMAL[table] + line, f"<{table} {line.strip() or 'minimal'}>")


@pytest.mark.parametrize("table", sorted(MINIMAL))
def test_minimal_documents_parse(table: str) -> None:
    _parse(table)


LITERAL_ROWS = [row for row in ALL_ROWS if LITERAL.fullmatch(row.default)]


@pytest.mark.parametrize("row", LITERAL_ROWS, ids=[f"{row.table}.{row.key}" for row in LITERAL_ROWS])
def test_documented_default_is_the_built_in_one(row: Row) -> None:
    literal = LITERAL.fullmatch(row.default).group(1)  # type: ignore[union-attr]
    written = _parse(row.table, f"{row.key} = {literal}\n")
    # The whole Config is compared (its source excepted): a literal that leaks into another field fails too.
    assert written == _parse(row.table), f"{row.table}.{row.key} = {literal} is not the default"


REQUIRED_ROWS = [row for row in ALL_ROWS if row.default == "required"]


@pytest.mark.parametrize("row", REQUIRED_ROWS, ids=[f"{row.table}.{row.key}" for row in REQUIRED_ROWS])
def test_required_key_is_required(row: Row) -> None:
    without = re.sub(rf"^{re.escape(row.key)} = .*\n", "", MINIMAL[row.table], flags=re.MULTILINE)
    assert without != MINIMAL[row.table], f"{row.table}.{row.key}: MINIMAL must set every required key"
    with pytest.raises(ConfigError):
        config.parse(without)


def test_example_is_a_valid_policy() -> None:
    sections = _sections(REFERENCE.read_text())
    heading = next(h for h in sections if h.lower().startswith("a complete example"))
    blocks = re.findall(r"^```toml\n(.*?)^```$", sections[heading], flags=re.MULTILINE | re.DOTALL)
    assert blocks, "the example section holds a ```toml block"
    cfg = config.parse(blocks[-1], "docs/configuration.md example")
    # what `policy check` does beyond parsing: lay the policy out, refuse conflicts, warn of dead rules
    assert compile_policy(cfg, 1, lambda port: 0).warnings == []
    assert cfg.segments["pumps"].life_critical and cfg.segments["pumps"].mode == abi.Mode.monitor
    assert all(not rule.name.startswith("rule") for rule in cfg.rules), "every rule of the example has an id"
