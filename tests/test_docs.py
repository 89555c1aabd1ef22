"""The docs stay true to the repository: README.md and docs/*.md link only to files (and headings) that
exist, and every ``run_bench.py`` command they quote parses with the suite's own command line.

Commands are taken from fenced code blocks (with ``\\`` line continuations joined and shell variables
assigned in the same block substituted) and from inline code spans. They are parsed by ``bench.cli.parse``,
which is what ``run_bench.py`` calls: ``build_parser()`` plus the global flags (``--plugin``,
``--no-progress``) before or after the subcommand, and ``run`` when no subcommand is named. The names a
command gives (methods, tasks, backbones, datasets, profiles) must be registered, except those a
``--plugin`` file of the command may define and ``timm:`` backbones (resolved from timm at run time).
Repository paths and dotted names in inline code, and the imports of Python snippets, must exist too.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(.*)$")
ARITHMETIC = re.compile(r"\$\(\([^)]*\)\)")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


@dataclass(frozen=True)
class Quoted:
    """A command or link as it stands in a doc: where, and its text."""

    file: Path
    line: int
    text: str

    def __str__(self) -> str:
        name = self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file
        return f"{name}:{self.line}: {self.text}"


def split_markdown(path: Path) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """(fenced code blocks as (first line number, lines), prose lines as (line number, text))."""
    blocks, prose, block, start = [], [], None, 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block, start = [], number + 1
            else:
                blocks.append((start, block))
                block = None
        elif block is not None:
            block.append(line)
        else:
            prose.append((number, line))
    assert block is None, f"{path}: a code fence opened at line {start - 1} is never closed"
    return blocks, prose


def substitute(text: str, variables: dict[str, str]) -> str:
    """Shell expansions a doc's example may use: $((arithmetic)) and $NAME / ${NAME} (unknown ones: 1)."""
    text = ARITHMETIC.sub("1", text)
    return VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), "1"), text)


def command_argv(text: str) -> list[str] | None:
    """The arguments after ``[python] run_bench.py`` (or the ``featup-bench`` script) in one shell line, or None."""
    text = text.strip()
    if text.startswith("$ "):
        text = text[2:]
    if "run_bench.py" not in text and not text.startswith("featup-bench"):
        return None
    tokens = shlex.split(text, comments=True)
    if len(tokens) >= 2 and re.fullmatch(r"python3?", tokens[0]) and tokens[1].endswith("run_bench.py"):
        return tokens[2:]
    if tokens and (tokens[0].endswith("run_bench.py") or tokens[0] == "featup-bench"):
        return tokens[1:]
    return None


def commands(path: Path) -> list[tuple[Quoted, list[str]]]:
    """Every run_bench.py command quoted in a doc, with its argv."""
    blocks, prose = split_markdown(path)
    found = []
    for start, lines in blocks:
        variables: dict[str, str] = {}
        number = 0
        while number < len(lines):
            first, text = start + number, lines[number]
            while text.rstrip().endswith("\\") and number + 1 < len(lines):
                number += 1
                text = text.rstrip()[:-1] + " " + lines[number].strip()
            number += 1
            if (assigned := ASSIGNMENT.match(text)) and "run_bench.py" not in assigned.group(2):
                value = shlex.split(substitute(assigned.group(2), variables), comments=True)
                variables[assigned.group(1)] = " ".join(value)  # unquoted $NAME splits into words
                continue
            argv = command_argv(substitute(text, variables))
            if argv is not None:
                found.append((Quoted(path, first, text.strip()), argv))
    for number, line in prose:
        for match in INLINE_CODE.finditer(line):
            code = match.group(2).replace("\\|", "|")  # a pipe escaped inside a table cell
            argv = command_argv(substitute(code, {}))
            if argv is not None:
                found.append((Quoted(path, number, code.strip()), argv))
    return found


def links(path: Path) -> list[Quoted]:
    """Every link target in a doc's prose (code spans and code blocks are not links)."""
    _, prose = split_markdown(path)
    found = []
    for number, line in prose:
        text = INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in LINK.finditer(text)]
        if definition := LINK_DEFINITION.match(text):
            targets.append(definition.group(1))
        found.extend(Quoted(path, number, target) for target in targets)
    return found


def heading_slugs(path: Path) -> set[str]:
    """The anchors GitHub gives a doc's headings: lower case, punctuation dropped, spaces as hyphens."""
    _, prose = split_markdown(path)
    slugs: set[str] = set()
    for _, line in prose:
        if heading := HEADING.match(line):
            slug = re.sub(r"[^\w\- ]", "", heading.group(2).strip().lower()).replace(" ", "-")
            unique, count = slug, 0
            while unique in slugs:
                count += 1
                unique = f"{slug}-{count}"
            slugs.add(unique)
    return slugs


ALL_COMMANDS = [c for path in DOC_FILES for c in commands(path)]
ALL_LINKS = [link for path in DOC_FILES for link in links(path)]


def test_the_docs_are_found_and_quote_commands_and_links():
    """A guard against an extractor that finds nothing, which would pass every check below vacuously."""
    assert (ROOT / "docs").is_dir() and len(DOC_FILES) >= 6, DOC_FILES
    assert len(ALL_COMMANDS) >= 30, [str(q) for q, _ in ALL_COMMANDS]
    assert len(ALL_LINKS) >= 20, [str(q) for q in ALL_LINKS]
    assert sum(1 for q, _ in ALL_COMMANDS if q.file.name == "README.md") >= 5


def test_relative_links_point_to_files_that_exist():
    broken = []
    for link in ALL_LINKS:
        target = link.text.split("#", 1)[0]
        if EXTERNAL.match(link.text) or not target:
            continue  # http(s) and the like, and pure #anchors
        if not (link.file.parent / target).exists():
            broken.append(str(link))
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_anchors_name_headings_that_exist():
    broken = []
    for link in ALL_LINKS:
        if EXTERNAL.match(link.text) or "#" not in link.text:
            continue
        target, anchor = link.text.split("#", 1)
        doc = (link.file.parent / target) if target else link.file
        if doc.suffix == ".md" and doc.is_file() and anchor not in heading_slugs(doc):
            broken.append(f"{link}  (headings of {doc.name}: {sorted(heading_slugs(doc))})")
    assert not broken, "links to headings that do not exist:\n" + "\n".join(broken)


def registered_names_problems(args, registries) -> list[str]:
    """Names in a parsed command that no registry knows (a --plugin file may define more)."""
    methods, tasks, backbones, datasets, profiles = registries
    plugin = bool(getattr(args, "plugin", None))
    problems = []

    def check(kind: str, names: list[str], known: list[str]) -> None:
        problems.extend(f"unknown {kind} {name!r}" for name in names if name not in known)

    if isinstance(getattr(args, "methods", None), str) and not plugin:
        check("method", [m.strip().partition(":")[0] for m in args.methods.split(",") if m.strip()], methods)
    if isinstance(getattr(args, "method", None), str) and not plugin:
        check("method", [args.method], methods)
    if isinstance(getattr(args, "tasks", None), str) and not plugin:
        check("task", [t.strip() for t in args.tasks.split(",") if t.strip()], tasks)
    backbone = getattr(args, "backbone", None)
    if isinstance(backbone, str) and not backbone.startswith("timm:") and not plugin:
        check("backbone", [backbone], backbones)
    for name in getattr(args, "backbones", None) or []:
        if not name.startswith("timm:") and not plugin:
            check("backbone", [name], backbones)
    if not plugin:
        check("dataset", [d.partition("=")[0] for d in getattr(args, "data", None) or []], datasets)
    if isinstance(getattr(args, "profile", None), str):
        check("profile", [args.profile], profiles)
    return problems


def test_quoted_commands_parse():
    from bench.cli import PROFILES, parse
    from bench.plugins import load_all
    from bench.registry import BACKBONES, DATASETS, METHODS, TASKS

    load_all()  # built-in methods, tasks and datasets (no --plugin files: they would stay registered)
    registries = (METHODS.names(), TASKS.names(), BACKBONES.names(), DATASETS.names(), PROFILES.names())
    failed = []
    for quoted, argv in ALL_COMMANDS:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                args = parse(argv)
        except SystemExit as exc:
            message = stderr.getvalue().strip().splitlines()
            failed.append(f"{quoted}\n    exit {exc.code}: {message[-1] if message else ''}")
            continue
        if problems := registered_names_problems(args, registries):
            failed.append(f"{quoted}\n    " + "; ".join(problems))
    assert not failed, "commands in the docs that run_bench.py would refuse:\n" + "\n".join(failed)


CODE_PATH = re.compile(r"(?:bench|methods|tasks|kernels|examples|tests)/[\w./-]*")
DOTTED = re.compile(r"((?:bench|methods|tasks|kernels)(?:\.\w+)+)(?:\(.*\))?")
PYTHON_IMPORT = re.compile(r"^\s*from\s+((?:bench|methods|tasks|kernels)[\w.]*)\s+import\s+([\w, ]+)")


def resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` names a module, or an attribute of the longest module prefix that imports."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_code_the_docs_name_exists():
    """Repository paths in inline code (``methods/base.py``), dotted names (``bench.backbones.backbone_from_model``)
    and the imports of Python snippets must exist: modules move, and the docs must move with them."""
    missing = []
    for path in DOC_FILES:
        blocks, prose = split_markdown(path)
        for number, line in prose:
            for match in INLINE_CODE.finditer(line):
                code = match.group(2).strip()
                if CODE_PATH.fullmatch(code) and not (ROOT / code).exists():
                    missing.append(str(Quoted(path, number, code)))
                elif (dotted := DOTTED.fullmatch(code)) and not resolves(dotted.group(1)):
                    missing.append(str(Quoted(path, number, code)))
        for start, lines in blocks:
            for offset, line in enumerate(lines):
                if imported := PYTHON_IMPORT.match(line):
                    names = [n.strip() for n in imported.group(2).split(",") if n.strip()]
                    if not all(resolves(f"{imported.group(1)}.{name}") for name in names):
                        missing.append(str(Quoted(path, start + offset, line.strip())))
    assert not missing, "code named in the docs that does not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("line, argv", [
    ("python run_bench.py", []),
    ("$ python run_bench.py table --run DIR  # a comment", ["table", "--run", "DIR"]),
    ("run_bench.py profile kernels", ["profile", "kernels"]),
    ("featup-bench list --weights", ["list", "--weights"]),
    ("ray start --head", None),
    ("# python run_bench.py run, in a comment", None),
])
def test_command_lines_are_recognised(line, argv):
    assert command_argv(line) == argv


def test_extraction_joins_continuations_and_substitutes_variables(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("""Run `python run_bench.py list --weights` first, then `run_bench.py` alone.

```bash
W="--backbone vit --weights vit.safetensors"
python run_bench.py run $W -m bilinear \\
    --shard $((ID + 1))/$COUNT  # a comment
```

| a | `python run_bench.py table --run DIR --format md\\|csv` |
""")
    found = [argv for _, argv in commands(doc)]
    assert found == [
        ["run", "--backbone", "vit", "--weights", "vit.safetensors", "-m", "bilinear", "--shard", "1/1"],
        ["list", "--weights"], [], ["table", "--run", "DIR", "--format", "md|csv"],
    ]
