"""Generate ``docs/cli.md``, the command-line reference, from the typer app itself.

    python docs/gen_cli.py            # rewrite docs/cli.md
    python docs/gen_cli.py --check    # exit 1 when docs/cli.md is stale (tests/test_docs.py runs this)

It walks the click command tree behind ``edgekit.cli.build_app()`` (so every package's contributed
commands are included, as installed here) and writes each command's usage, help text, arguments and
options. Output is deterministic: no terminal width, colours or environment-dependent defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["render", "main"]

OUT = Path(__file__).resolve().parent / "cli.md"

HEADER = """# Command-line reference

Generated from the typer app by `docs/gen_cli.py` — do not edit by hand; run
`python docs/gen_cli.py` after changing a command (`tests/test_docs.py` fails when this file is stale).

`edgekit` is one command; each package contributes its sub-commands through the `edgekit.cli`
entry-point group, so an installation with fewer extras (a device with `edgekit[agent]`, no torch)
shows fewer of them. Any edgekit error ends a command with one line on stderr and exit code 1;
a usage error exits 2.
"""


# typer >= 0.22 vendors its own click (``typer._click``): walk the tree by duck typing, not isinstance


def _help(cmd) -> str:
    text = (cmd.help or cmd.short_help or "").strip()
    # typer/click use \b and \f markers; keep only the text meant for users
    text = text.split("\f")[0].replace("\b\n", "")
    return "\n".join(line.rstrip() for line in text.splitlines()).strip()


def _type_name(p, ctx) -> str:
    if getattr(p, "is_flag", False):
        return "flag"
    if hasattr(p, "display_type"):  # typer's own click
        name = str(p.display_type(ctx)).strip("<>")
    else:
        t = p.type
        name = "|".join(str(c) for c in t.choices) if getattr(t, "choices", None) else str(getattr(t, "name", t))
    return name + (", repeatable" if getattr(p, "multiple", False) else "")


def _default(p) -> str:
    if getattr(p, "is_flag", False) or p.required:
        return ""
    d = p.default
    if callable(d) or d is None or d == () or d == []:
        return ""
    if isinstance(d, (list, tuple)):
        d = ", ".join(str(v) for v in d)
    return f"`{d}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _params(cmd, ctx) -> list[str]:
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    opts = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden and p.name != "help"]
    lines: list[str] = []
    if args:
        lines += ["", "| argument | type | required | description |", "|---|---|---|---|"]
        for a in args:
            label = (a.metavar or a.name or "").upper()
            lines.append(f"| `{label}` | {_type_name(a, ctx)} | {'yes' if a.required else 'no'} | "
                         f"{_cell(getattr(a, 'help', None) or '')} |")
    if opts:
        lines += ["", "| option | type | default | description |", "|---|---|---|---|"]
        for o in opts:
            names = ", ".join(f"`{n}`" for n in [*o.opts, *o.secondary_opts])
            env = f" (env `{o.envvar}`)" if isinstance(o.envvar, str) else ""
            req = " **required**" if o.required else ""
            lines.append(f"| {names} | {_type_name(o, ctx)} | {_default(o)} | {_cell((o.help or '') + env)}{req} |")
    return lines


def _walk(cmd, path: list[str], out: list[str]) -> None:
    ctx = cmd.context_class(cmd, info_name=" ".join(path))
    title = " ".join(path)
    depth = min(len(path), 4)
    out += ["", f"{'#' * (depth + 1)} `{title}`", ""]
    if help_text := _help(cmd):
        out.append(help_text)
        out.append("")
    pieces = cmd.collect_usage_pieces(ctx)
    out += ["```text", f"{title} {' '.join(pieces)}".rstrip(), "```"]
    out += _params(cmd, ctx)
    if hasattr(cmd, "commands"):
        subs = [(n, c) for n, c in cmd.commands.items() if not c.hidden]
        if subs:
            out += ["", "| command | what it does |", "|---|---|"]
            for name, sub in sorted(subs):
                out.append(f"| `{title} {name}` | {_cell(sub.get_short_help_str(limit=300))} |")
        for name, sub in sorted(subs):
            _walk(sub, [*path, name], out)


def render() -> str:
    """The whole reference as Markdown text."""
    import typer

    from edgekit.cli import build_app

    root = typer.main.get_command(build_app())
    out: list[str] = [HEADER.rstrip()]
    _walk(root, ["edgekit"], out)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate docs/cli.md from the edgekit typer app.")
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be generated")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python docs/gen_cli.py", file=sys.stderr)
            return 1
        print(f"{args.out} is current")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
