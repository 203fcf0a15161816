"""Regenerate the option tables of ``docs/recipes.md`` from the recipe schema and the registered passes.

    python docs/gen_recipes.py            # rewrite the generated part of docs/recipes.md
    python docs/gen_recipes.py --check    # exit 1 when it is stale (tests/test_docs.py runs this)

The text between ``<!-- BEGIN GENERATED -->`` and ``<!-- END GENERATED -->`` is rebuilt from the pydantic
models (``edgekit.compress.recipe.Recipe`` and its sections, ``Budget``, and every pass config in the
pass registry): each field's name, type, default, and the ``#:`` comment above it in the source as
its description. The hand-written text around it is kept.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from pathlib import Path

__all__ = ["main", "render_tables"]

DOC = Path(__file__).resolve().parent / "recipes.md"
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"


def _comments(cls) -> dict[str, str]:
    """``#:`` comments directly above each field in the class source (and its bases')."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            s = line.strip()
            if s.startswith("#:"):
                pending.append(s[2:].strip())
                continue
            m = re.match(r"^([A-Za-z_]\w*)\s*:", s)
            if m and pending:
                out[m.group(1)] = " ".join(pending)
            pending = []
    return out


def _type(annotation) -> str:
    text = str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    text = re.sub(r"\b(?:typing|edgekit\.[\w.]+|pathlib)\.", "", text)
    text = text.replace("NoneType", "None").replace("<class '", "").replace("'>", "")
    return text


def _default(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            try:
                value = field.default_factory()
            except TypeError:
                return ""
            return f"`{_plain(value)}`" if value not in ({}, [], ()) else ""
        return "required" if field.is_required() else ""
    return "" if field.default is None else f"`{_plain(field.default)}`"


def _plain(value) -> str:
    if hasattr(value, "model_dump"):
        return str(value.model_dump(mode="json"))
    return str(value)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(cls, skip: tuple[str, ...] = ()) -> list[str]:
    notes = _comments(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, f in cls.model_fields.items():
        if name in skip:
            continue
        key = f.alias or name
        desc = f.description or notes.get(name, "")
        rows.append(f"| `{key}` | {_cell(_type(f.annotation))} | {_cell(_default(f))} | {_cell(desc)} |")
    return rows


def render_tables() -> str:
    from edgekit.compress.context import Budget
    from edgekit.compress.recipe import BundleInfo, DataSpec, ModelSpec, Recipe
    from edgekit.compress.registry import config_type, pass_names

    out: list[str] = [BEGIN, "", "### Top-level keys", ""]
    out += _table(Recipe)
    for title, cls in (("`model`", ModelSpec), ("`data`", DataSpec), ("`bundle`", BundleInfo), ("`budget`", Budget)):
        out += ["", f"### {title}", ""] + _table(cls)
    out += ["", "### Passes", "",
            "Each item of `passes` is a mapping with one key, the pass name, whose value holds its options:",
            ""]
    for name in pass_names():
        cls = config_type(name)
        own = cls.__dict__.get("__doc__")  # not the base class's docstring
        doc = inspect.cleandoc(own).split("\n\n")[0].replace("\n", " ") if own else ""
        consumes = getattr(cls, "consumes", None)
        out += ["", f"#### `{name}`", ""]
        if doc:
            out += [doc, ""]
        if isinstance(consumes, str):
            kind = {"torch": "a PyTorch", "onnx": "an ONNX", "any": "any"}.get(consumes, consumes)
            out += [f"Takes {kind} model artifact.", ""]
        out += _table(cls)
    out += ["", END]
    return "\n".join(out)


def splice(doc: str, tables: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} lacks the {BEGIN} / {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + tables + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate the option tables of docs/recipes.md.")
    ap.add_argument("--check", action="store_true", help="exit 1 if the generated part is stale")
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args(argv)
    current = args.doc.read_text()
    fresh = splice(current, render_tables())
    if args.check:
        if fresh != current:
            print(f"{args.doc} is stale: run python docs/gen_recipes.py", file=sys.stderr)
            return 1
        print(f"{args.doc} is current")
        return 0
    args.doc.write_text(fresh)
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
