"""The generated configuration reference (ark_dist/configdoc.py) against the config dataclasses,
walked here independently: README is current, every leaf key is documented once with its default and
a description, and `launch.py config --show` prints a resolved recipe."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args, get_origin

import pytest
import yaml

from ark_dist import configdoc
from ark_dist.config import Config, load, to_dict
from launch import main as launch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def schema_leaves(cls=Config, obj=None, prefix=""):
    """(dotted key, default as plain data) for every leaf field under `cls`; the entries of a mapping
    of dataclasses appear under `<prefix>.<*>` with the value class's defaults."""
    obj = cls() if obj is None else obj
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}.{f.name}" if prefix else f.name, hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from schema_leaves(hint, getattr(obj, f.name), key)
            continue
        yield key, to_dict(getattr(obj, f.name))
        if get_origin(hint) is dict and dataclasses.is_dataclass(get_args(hint)[1]):
            yield from schema_leaves(get_args(hint)[1], get_args(hint)[1](), f"{key}.<*>")


def schema_classes(cls=Config):
    """Every config dataclass of the tree below the root (nested fields and mapping values)."""
    for hint in typing.get_type_hints(cls).values():
        inner = get_args(hint)[1] if get_origin(hint) is dict and len(get_args(hint)) == 2 else hint
        if dataclasses.is_dataclass(inner):
            yield inner
            yield from schema_classes(inner)


def table_rows(text: str) -> list[dict]:
    """The reference's table rows: key (a mapping's entry placeholder written `<*>`), type, default
    (parsed YAML) and description."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, line
        key = re.sub(r"<[^>*]+>", "<*>", cells[0].strip("`"))
        rows.append({"key": key, "type": cells[1], "default": yaml.safe_load(cells[2].strip("`")), "doc": cells[3]})
    return rows


@pytest.fixture(scope="module")
def reference() -> str:
    return configdoc.reference()


@pytest.fixture(scope="module")
def rows(reference) -> dict[str, dict]:
    return {r["key"]: r for r in table_rows(reference)}


def test_readme_section_is_the_generated_reference(reference):
    section = configdoc.readme_section((ROOT / "README.md").read_text())
    assert section is not None, "README.md lacks the config-reference markers"
    assert section == reference, "README.md's configuration reference is stale: python launch.py config --write-readme"


def test_every_leaf_key_appears_exactly_once(reference):
    listed = [r["key"] for r in table_rows(reference)]
    expected = [key for key, _ in schema_leaves()]
    assert sorted(listed) == sorted(expected)
    assert len(set(listed)) == len(listed)
    assert "data.store.url" in listed and "data.policies.<*>.uncertain" in listed and "tune.space" in listed


def test_every_key_and_section_has_a_description(rows):
    missing = sorted(key for key, row in rows.items() if not row["doc"])
    assert not missing, f"fields without a trailing `# comment` in the config source: {missing}"
    undocumented = [c.__name__ for c in schema_classes() if not configdoc.class_doc(c)]
    assert not undocumented, f"config dataclasses without a docstring: {undocumented}"


def test_defaults_match_the_dataclasses(rows):
    for key, default in schema_leaves():
        assert rows[key]["default"] == default, key
    assert rows["optim.lr"]["default"] == 0.3 and rows["optim.min_lr"]["default"] == 1e-5
    assert rows["data.views.crop_scale"]["default"] == [0.08, 1.0]
    assert rows["model.pretrained"]["default"] is None and rows["tune.space"]["default"] == {}
    assert rows["data.policies"]["default"]["chexpert"]["uncertain"] == "lsr"
    assert rows["data.policies.<*>.uncertain"]["default"] == "ones"


def test_readable_types(rows):
    assert rows["data.num_workers"]["type"] == "int"
    assert rows["data.store.endpoint_url"]["type"] == "str or null"
    assert rows["engine.precision"]["type"] == "one of: fp32, bf16, fp16"
    assert rows["data.datasets"]["type"] == "list of str"
    assert rows["data.views.crop_scale"]["type"] == "[float, float]"
    assert rows["data.policies"]["type"] == "map of str -> PolicyConfig (see `data.policies.<dataset>`)"


def test_sections_in_tree_order(reference):
    headings = re.findall(r"^### `([^`]+)`", reference, flags=re.M)
    assert headings[:5] == ["data", "data.store", "data.policies.<dataset>", "data.default_policy", "data.views"]
    assert headings[5:] == ["model", "model.dense", "method", "method.foundation", "optim", "engine", "train", "tracking",
                            "tune", "finetune"]


def test_field_comments_belong_to_their_own_line():
    @dataclass(kw_only=True)
    class Tricky:
        """Comments in awkward places."""

        # a comment on a line of its own documents nothing
        plain: int = 1
        hashed: str = "a # not a comment"  # the real one
        spread: list[int] = field(  # opens
            default_factory=lambda: [1, 2])  # closes

        def method(self) -> None:
            local: int = 2  # inside a method: not a field
            del local

    assert configdoc.field_comments(Tricky) == {"plain": "", "hashed": "the real one", "spread": "opens closes"}


def test_show_prints_the_resolved_recipe(capsys):
    assert launch(["config", "--show", str(DEMO), "optim.lr=0.01"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 0.01
    assert shown == to_dict(load(DEMO, ["optim.lr=0.01"]))


@pytest.mark.parametrize("args, named", [(["optim.lrr=0.1"], "optim.lrr"), (["optim.lr=fast"], "optim.lr")])
def test_show_bad_key_exits_2_naming_it(capsys, args, named):
    assert launch(["config", "--show", str(DEMO), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err


def test_show_missing_file_exits_2(capsys, tmp_path):
    assert launch(["config", "--show", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: config file not found")


def test_write_and_check_readme(tmp_path, capsys, reference):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\ntext\n")
    assert launch(["config", "--check-readme", "--readme", str(readme)]) == 1  # no markers yet
    assert launch(["config", "--write-readme", "--readme", str(readme)]) == 0  # appended
    text = readme.read_text()
    assert text.startswith("# title\n\ntext\n\n## Configuration reference\n")
    assert configdoc.readme_section(text) == reference
    stale = text.replace("| `optim.lr` |", "| `optim.lr_old` |") + "\n## After\n"
    readme.write_text(stale)
    assert launch(["config", "--check-readme", "--readme", str(readme)]) == 1
    assert "python launch.py config --write-readme" in capsys.readouterr().err
    assert launch(["config", "--write-readme", "--readme", str(readme)]) == 0  # replaced in place
    assert readme.read_text() == text + "\n## After\n"
    assert launch(["config", "--check-readme", "--readme", str(readme)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left behind
