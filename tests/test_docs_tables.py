"""The docs' reference tables cannot fall behind the tables they describe.

docs/methods.md's table of loss terms is written from :data:`kdmri.distill.terms.TERMS`
(between its two markers); ``python tests/test_docs_tables.py`` rewrites it, and a test
fails while the page differs. config/README.md's table of top-level keys is prose, checked
against the schema: one row per key in the schema's order, each naming the stages, data
formats, tasks, network families and distillation weights the schema lists there.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from kdmri.config import schema  # noqa: E402
from kdmri.distill.terms import TERMS  # noqa: E402

METHODS_MD = ROOT / "docs" / "methods.md"
CONFIG_README = ROOT / "config" / "README.md"
BEGIN = ("<!-- the table of loss terms, written from kdmri.distill.terms.TERMS by "
         "python tests/test_docs_tables.py: edit the table there -->")
END = "<!-- end of the table of loss terms -->"


def _cell(text: str) -> str:
    """``text`` as code in a Markdown table cell (a pipe escaped)."""
    return f"`{text.replace('|', chr(92) + '|')}`"


def terms_table() -> str:
    """The Markdown table of the loss terms: name, formula, options, inputs, in the
    table's order (the order the trainer sums them in)."""
    lines = ["| name | formula | options (first: default) | inputs |", "|---|---|---|---|"]
    for name, term in TERMS.items():
        options = "; ".join(f"`{key}`: " + ", ".join(f"`{v}`" for v in values)
                            for key, values in term.options.items()) or "-"
        inputs = ", ".join(f"`{i}`" for i in term.inputs)
        lines.append(f"| `{name}` | {_cell(term.formula)} | {options} | {inputs} |")
    return "\n".join(lines)


def _generated_block(text: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise AssertionError(f"{METHODS_MD}: expected the markers {BEGIN!r} and {END!r} once each")
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n")


def write_terms_table() -> None:
    text = METHODS_MD.read_text()
    old = _generated_block(text)
    METHODS_MD.write_text(text.replace(old, terms_table(), 1))


def test_the_terms_table_is_written_from_the_term_table():
    assert _generated_block(METHODS_MD.read_text()) == terms_table(), (
        "docs/methods.md's table of loss terms differs from TERMS: run "
        "python tests/test_docs_tables.py")


def test_the_terms_table_lists_each_term_once_in_order():
    rows = re.findall(r"^\| `(\w+)` \|", terms_table(), re.M)
    assert rows == list(TERMS)


def _key_rows() -> dict[str, str]:
    """config/README.md's table of top-level keys: key -> the row's text, in order."""
    text = CONFIG_README.read_text()
    section = text[text.index("## Top-level keys"):]
    section = section[:section.index("\n## ", 1)]
    return {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", section, re.M)}


def _names_each_row_gives() -> dict[str, list[str]]:
    """Per top-level key, the names from the schema its row must give (in backticks)."""
    root = schema()
    props, defs = root["properties"], root["$defs"]
    return {
        "datasets": defs["dataset"]["properties"]["format"]["enum"],
        "tasks": [*props["tasks"]["properties"], *defs["net"]["properties"]["family"]["enum"]],
        "stages": list(props["stages"]["properties"]),
        "kd": list(props["kd"]["properties"]),
    }


def test_the_config_readme_has_a_row_per_top_level_key_in_order():
    assert list(_key_rows()) == list(schema()["properties"])


def test_the_config_readme_names_what_the_schema_lists():
    rows = _key_rows()
    for key, names in _names_each_row_gives().items():
        missing = [name for name in names if f"`{name}`" not in rows[key]]
        assert not missing, f"config/README.md: the {key} row does not name {missing}"


if __name__ == "__main__":
    write_terms_table()
    print(f"wrote the table of loss terms in {METHODS_MD}")
