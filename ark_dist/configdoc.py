"""`python launch.py config`: the configuration reference, generated from the config dataclasses so
it cannot drift from them, and a recipe printed fully resolved.

    python launch.py config --reference                   the reference (markdown)
    python launch.py config --show FILE [key=value ...]   the resolved recipe (YAML)
    python launch.py config --check-readme                exit 1 if README.md's reference is stale
    python launch.py config --write-readme                regenerate README.md's reference in place

A key's description is the trailing `# comment` on its field's line in the config source; a
section's is its dataclass docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import io
import os
import sys
import tempfile
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from ark_dist.config import Config, load, to_dict

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
MAP_KEY = {"data.policies": "<dataset>"}  # the placeholder for a mapping's key in its entries' dotted keys

PREAMBLE = """\
Generated from the config dataclasses (`ark_dist/config.py` and each component's `config.py`) by
`python launch.py config --write-readme`; a test fails when this section and the schema differ.
Every key is one dotted name, used the same way everywhere:

- **YAML recipes** (`configs/`) nest keys by section: `optim: {lr: 0.05}` sets `optim.lr`.
- **Overrides** follow the recipe on the command line as `key=value`, the value read as YAML:
  `python launch.py train --config configs/demo.yaml optim.lr=0.05 data.views.crop_scale=[0.2,1.0]`.
- **Inheritance**: a recipe that starts with `base: other.yaml` (relative to itself) states only what
  it changes; sections merge key by key, a list or scalar replaces the base's. Overrides apply last.
- **Sweeps**: `tune.space` samples the same keys per trial, e.g. `optim.lr: {loguniform: [0.03, 1.0]}`.

Keys left unset take the defaults below. An unknown key or a bad value stops the load with an error
that names the key. `python launch.py config --show FILE [key=value ...]` prints a recipe resolved."""


# ---------------------------------------------------------------- reading the schema


@dataclass(kw_only=True)
class Row:
    """One leaf key of the tree, as the reference's table shows it."""

    key: str  # dotted, e.g. data.store.url
    type: str  # readable, e.g. "str or null"
    default: Any  # plain data (to_dict form)
    doc: str  # the field's trailing comment; "" when it has none


@dataclass(kw_only=True)
class Section:
    """A dataclass in the tree: its dotted path, what it is, and its leaf keys."""

    key: str  # dotted, e.g. data.views or data.policies.<dataset>
    cls: type
    doc: str  # the dataclass docstring, then the comment on the field that holds it
    rows: list[Row]


@cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its trailing `# comment` in `cls`'s own source (only fields that `cls` itself
    annotates). A comment belongs to a field when it sits on a line of that field's statement; a
    comment on a line of its own belongs to nothing."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[str, str] = {}
    depth, code, notes = 0, [], []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.COMMENT:
            if code:  # inside or after a statement, not a line of its own
                notes.append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NEWLINE:  # the end of a logical line (a statement)
            # the class body is depth 1; `name: type [= default]` there is a field
            if depth == 1 and len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":":
                comments[code[0].string] = " ".join(n for n in notes if n)
            code, notes = [], []
        elif tok.type not in (tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER):
            code.append(tok)
    return comments


def field_doc(cls: type, name: str) -> str:
    """The trailing comment of field `name`, looked up in the class (or base class) that declares it."""
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return field_comments(klass).get(name, "")
    return ""


def class_doc(cls: type) -> str:
    """`cls`'s own docstring; "" when it has none (dataclasses otherwise make one of the signature)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(f"{cls.__name__}(") else inspect.cleandoc(doc)


def type_name(hint: Any, key: str = "") -> str:
    """A readable type: `int`, `str or null`, `one of: fp32, bf16`, `list of str`, `[float, float]`."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return "any"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a, key) for a in sorted(args, key=lambda a: a is type(None)))
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return "[" + ", ".join(type_name(a, key) for a in args) + "]"
    if origin in (list, tuple):
        return "list of " + type_name(args[0] if args else Any, key)
    if origin is dict:
        kt, vt = args or (Any, Any)
        if dataclasses.is_dataclass(vt):
            return f"map of {type_name(kt)} -> {vt.__name__} (see `{entry_key(key)}`)"
        return f"map of {type_name(kt)} -> {type_name(vt, key)}"
    if dataclasses.is_dataclass(hint):
        return hint.__name__
    return getattr(hint, "__name__", str(hint))


def entry_key(key: str) -> str:
    """The dotted path of one entry of mapping `key`: data.policies -> data.policies.<dataset>."""
    return f"{key}.{MAP_KEY.get(key, '<key>')}"


def map_value_class(hint: Any) -> type | None:
    """V for a dict[K, V] hint whose values are config dataclasses, else None."""
    if get_origin(hint) is dict and len(get_args(hint)) == 2 and dataclasses.is_dataclass(get_args(hint)[1]):
        return get_args(hint)[1]
    return None


def sections(cls: type = Config, obj: Any = None, key: str = "", note: str = "") -> list[Section]:
    """Every dataclass of the tree under `cls`, depth first in field order: `cls` itself (when it has
    leaf keys), then each nested dataclass field, each mapping-of-dataclass field's entry. Defaults
    come from `obj`, the default instance (so a parent's default_factory is honoured)."""
    obj = cls() if obj is None else obj
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        dotted, hint, doc = f"{key}.{f.name}" if key else f.name, hints[f.name], field_doc(cls, f.name)
        if dataclasses.is_dataclass(hint):
            nested += sections(hint, getattr(obj, f.name), dotted, doc)
            continue
        rows.append(Row(key=dotted, type=type_name(hint, dotted), default=to_dict(getattr(obj, f.name)), doc=doc))
        value_cls = map_value_class(hint)
        if value_cls is not None:
            entry = (f"`{dotted}` maps each `{MAP_KEY.get(dotted, '<key>')}` to these keys. An entry's missing keys "
                     f"take the defaults below; entries add to the default map rather than replace it.")
            nested += sections(value_cls, value_cls(), entry_key(dotted), entry)
    doc = " ".join(d for d in (class_doc(cls), _sentence(note)) if d)
    own = [Section(key=key, cls=cls, doc=doc, rows=rows)] if rows else []
    return own + nested


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


# ---------------------------------------------------------------- rendering


def yamlish(value: Any) -> str:
    """A default as YAML on one line: null, 0.3, [0.08, 1.0], {}, {chexpert: {uncertain: lsr, ...}}."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _prose(text: str) -> str:
    """Text for a markdown cell or paragraph: `<` escaped outside code spans (GitHub would take
    `<name>` for an HTML tag and drop it)."""
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference() -> str:
    """The configuration reference (markdown): a preamble on how keys are set, then one subsection
    per config dataclass with a `| key | type | default | what it does |` table of its leaf keys."""
    out = [PREAMBLE]
    for s in sections():
        out += ["", f"### `{s.key}`", ""]
        if s.doc:
            out += [_prose(s.doc), ""]
        out += ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
        out += [f"| `{_cell(r.key)}` | {_cell(r.type)} | `{_cell(yamlish(r.default))}` | {_cell(_prose(r.doc))} |"
                for r in s.rows]
    return "\n".join(out)


# ---------------------------------------------------------------- README section


def readme_section(text: str) -> str | None:
    """What sits between the markers (without the newlines next to them); None without markers."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(BEGIN):end].strip("\n")


def with_reference(text: str) -> str:
    """README text with the generated section replaced, or appended at the end when it has none."""
    block = f"{BEGIN}\n\n{reference()}\n\n{END}"  # blank lines: the markers never join a table
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return text.rstrip("\n") + f"\n\n## Configuration reference\n\n{block}\n"
    return text[:start] + block + text[end + len(END):]


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it into place: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_readme(path: Path) -> int:
    current = readme_section(path.read_text()) if path.is_file() else None
    expected = reference()
    if current == expected:
        print(f"{path.name}: the configuration reference is up to date")
        return 0
    why = "has no configuration reference markers" if current is None else "has a stale configuration reference"
    print(f"{path}: {why}; regenerate it with: python launch.py config --write-readme", file=sys.stderr)
    if current is not None:
        diff = difflib.unified_diff(current.splitlines(), expected.splitlines(), "README", "schema", lineterm="", n=0)
        print("\n".join(list(diff)[:20]), file=sys.stderr)
    return 1


# ---------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch.py config", description="the configuration reference / a resolved recipe")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--reference", action="store_true", help="print the configuration reference (markdown)")
    what.add_argument("--show", metavar="FILE", help="print FILE plus overrides, fully resolved, as YAML")
    what.add_argument("--check-readme", action="store_true", help="exit 1 if README.md's reference is stale")
    what.add_argument("--write-readme", action="store_true", help="regenerate README.md's reference")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, with --show")
    p.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.overrides and args.show is None:
        p.error("key=value overrides go with --show FILE")
    if args.reference:
        print(reference())
        return 0
    if args.check_readme:
        return check_readme(args.readme)
    if args.write_readme:
        write_atomic(args.readme, with_reference(args.readme.read_text() if args.readme.is_file() else ""))
        print(f"wrote the configuration reference into {args.readme}")
        return 0
    try:
        cfg = load(args.show, args.overrides)
    except ValueError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, even for YAML errors
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
