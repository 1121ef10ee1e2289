"""The documentation does not point at things that are not there.

For the README, every page under ``docs/``, the model card and the sample pair's README:

* every relative link (``[text](target)``, images, ``src=``/``href=``) names a file or folder
  that exists, and an ``#anchor`` names a heading of the target page (GitHub's slug rule);
* every ``buildwatch`` command quoted in a fenced code block or an inline code span names a
  subcommand the CLI has (asked from the click group itself, not from a list kept here), and
  every ``--option`` given to it is one of that subcommand's options;
* every ``python scripts/X.py --option`` names an existing script that knows the option;
* every repository path mentioned (``scripts/...``, ``configs/...``, ``sample_tiles/...``,
  ``docs/...``, ``detector/...``, ``training/...``, ``tests/...``) exists.

And the README stays a front door: each user's page is linked from its first screen, every page
under ``docs/`` is linked from it, and its test command is the one ``.ci/run`` runs.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from functools import cache
from pathlib import Path

import click
import pytest


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise RuntimeError("no pyproject.toml above the tests")


ROOT = _repo_root()
DOC_FILES = sorted(
    {
        ROOT / "README.md",
        ROOT / "detector" / "models" / "MODEL_CARD.md",
        ROOT / "sample_tiles" / "README.md",
    }
    | set((ROOT / "docs").rglob("*.md"))
)
IDS = [str(p.relative_to(ROOT)) for p in DOC_FILES]

# The README's first screen: what a newcomer sees without scrolling.
FIRST_SCREEN_LINES = 40
USER_PAGES = ("docs/operations.md", "docs/review.md", "docs/model.md")

# Top-level folders whose paths, when a page mentions them, must exist (from the repository root).
CHECKED_TOP = ("scripts", "configs", "sample_tiles", "docs", "detector", "training", "tests")
PATH_RE = re.compile(r"(?<![\w./$~{<-])((?:" + "|".join(CHECKED_TOP) + r")/[\w./-]*)")

FENCE_RE = re.compile(r"^\s*(```|~~~)")
LINK_RE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)"
)
REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK_RE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
CODE_SPAN_RE = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
SEPARATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "(", ")", "2>", "2>&1"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|\.\.\.|…")


class Doc:
    """One Markdown page split into fenced code blocks and prose (line numbers kept)."""

    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text(encoding="utf-8")
        prose, blocks, block, fence = [], [], None, None
        for number, line in enumerate(self.text.splitlines(), 1):
            marker = FENCE_RE.match(line)
            if fence is None and marker:
                fence, block = marker.group(1), []
                prose.append("")
            elif (
                fence is not None
                and marker
                and marker.group(1) == fence
                and not line.strip().strip(fence)
            ):
                blocks.append(block)
                fence = None
                prose.append("")
            elif fence is not None:
                block.append((number, line))
                prose.append("")
            else:
                prose.append(line)
        self.blocks = blocks  # [(line number, text)] per fenced block
        self.prose = "\n".join(prose)  # fences blanked, so offsets map to line numbers

    def line_of(self, offset: int) -> int:
        return self.prose.count("\n", 0, offset) + 1

    def code_spans(self):
        """(line, text) of every inline code span in the prose."""
        for m in CODE_SPAN_RE.finditer(self.prose):
            yield self.line_of(m.start()), m.group(2).strip()

    def prose_without_code(self) -> str:
        return CODE_SPAN_RE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), self.prose)

    def links(self):
        text = self.prose_without_code()
        for regex in (LINK_RE, REF_DEF_RE, HTML_LINK_RE):
            for m in regex.finditer(text):
                yield self.line_of(m.start()), m.group(1)

    def command_lines(self):
        """(line, logical command line) from fenced blocks (continuations joined) and code spans."""
        for block in self.blocks:
            pending, start = "", None
            for number, line in block:
                if start is None:
                    start = number
                stripped = line.rstrip()
                if stripped.endswith("\\"):
                    pending += stripped[:-1] + " "
                    continue
                yield start, re.sub(r"^\s*\$\s+", "", pending + stripped)
                pending, start = "", None
            if pending:
                yield start, pending
        yield from self.code_spans()

    def anchors(self) -> set[str]:
        slugs, seen, fence = set(), {}, None
        for line in self.text.splitlines():
            marker = FENCE_RE.match(line)
            if marker:
                fence = None if fence == marker.group(1) else (fence or marker.group(1))
                continue
            m = None if fence else HEADING_RE.match(line)
            if not m:
                continue
            slug = github_slug(m.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            slugs.add(slug if count == 0 else f"{slug}-{count}")
        for m in re.finditer(r"""<a\s+(?:name|id)\s*=\s*["']([^"']+)["']""", self.text):
            slugs.add(m.group(1))
        return slugs


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: the rendered text in lower case, punctuation dropped, spaces to
    hyphens (a repeated heading gets -1, -2, ... in :meth:`Doc.anchors`)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = text.replace("`", "").strip().lower()
    kept = "".join(
        ch
        for ch in text
        if ch in " -" or unicodedata.category(ch)[0] in "LMN" or unicodedata.category(ch) == "Pc"
    )
    return kept.replace(" ", "-")


@cache
def load(path: Path) -> Doc:
    return Doc(path)


# --- the CLI, asked through click -------------------------------------------------------------


@cache
def _group() -> click.Group:
    from detector.cli import cli

    return cli


def _ctx(command: click.Command) -> click.Context:
    return click.Context(command, info_name=command.name)


@cache
def _subcommand(name: str):
    group = _group()
    if name not in group.list_commands(_ctx(group)):
        return None
    return group.get_command(_ctx(group), name)


def _options(command: click.Command) -> set[str]:
    opts = set(_ctx(command).help_option_names)
    for param in command.params:
        opts.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("-"))
    return opts


def _tokens(line: str) -> list[str]:
    line = re.sub(
        r"(?<=\w)\|(?=\w)", "\u00a6", line
    )  # `cases list|show|export`: alternatives, not a pipe
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in prose: plain words are enough here
        return line.split()


def _option_name(token: str) -> str | None:
    token = token.strip("[]()")
    m = re.match(r"^(--?[A-Za-z][\w-]*)", token)
    return m.group(1) if m and token not in ("-", "--") else None


def _commands(line: str):
    """(program, words) of each buildwatch, ``python -m detector`` or scripts/ command in a line."""
    tokens = _tokens(line)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        start = None
        if token == "buildwatch":
            start, program = i + 1, "buildwatch"
        elif token == "python" and tokens[i + 1 : i + 3] == ["-m", "detector"]:
            start, program = i + 3, "buildwatch"
        elif re.match(r"^scripts/[\w./-]+$", token):
            start, program = i + 1, token
        if start is None:
            i += 1
            continue
        end = start
        while end < len(tokens) and tokens[end] not in SEPARATORS:
            end += 1
        yield program, tokens[start:end]
        i = end


def _check_buildwatch(words: list[str]) -> list[str]:
    problems = []
    group = _group()
    global_opts = _options(group) | {"--version"}
    rest = list(words)
    while rest and _option_name(rest[0]):
        if _option_name(rest[0]) not in global_opts:
            problems.append(f"'buildwatch {rest[0]}': no such global option")
        rest.pop(0)
    if not rest:
        return problems
    name = rest.pop(0).strip("[]")
    if PLACEHOLDER.search(name):
        return problems
    for alternative in name.split("\u00a6"):
        try:
            command = _subcommand(alternative)
        except (
            click.ClickException
        ) as exc:  # a training command without the `train` extra installed
            pytest.skip(f"cannot load 'buildwatch {alternative}': {exc.format_message()}")
        if command is None:
            problems.append(f"'buildwatch {alternative}': no such subcommand")
            continue
        targets = [(f"buildwatch {alternative}", command, rest)]
        if isinstance(command, click.Group):
            sub = next((w for w in rest if not _option_name(w)), None)
            after = rest[rest.index(sub) + 1 :] if sub else []
            if sub is None or PLACEHOLDER.search(sub):
                targets = [
                    (f"buildwatch {alternative}", command, [w for w in rest if _option_name(w)])
                ]
            else:
                targets = []
                for part in sub.strip("[]").split("\u00a6"):
                    child = command.get_command(_ctx(command), part)
                    if child is None:
                        problems.append(f"'buildwatch {alternative} {part}': no such subcommand")
                    else:
                        targets.append((f"buildwatch {alternative} {part}", child, after))
        for label, cmd, args in targets:
            known = _options(cmd)
            for word in args:
                opt = _option_name(word)
                if opt and opt not in known:
                    problems.append(
                        f"'{label} {opt}': no such option (has: {', '.join(sorted(known))})"
                    )
    return problems


def _check_script(script: str, words: list[str]) -> list[str]:
    path = ROOT / script
    if not path.exists():
        return [f"'{script}': no such file"]
    if path.suffix != ".py":
        return []
    source = path.read_text(encoding="utf-8")
    return [
        f"'{script} {opt}': the script does not define {opt}"
        for opt in filter(None, map(_option_name, words))
        if f'"{opt}"' not in source and f"'{opt}'" not in source
    ]


def link_problems(doc: Doc) -> list[str]:
    problems = []
    for line, target in doc.links():
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http(s):, mailto:, ...
        file_part, _, anchor = target.partition("#")
        dest = (doc.path.parent / file_part).resolve() if file_part else doc.path
        if not dest.exists():
            problems.append(f"line {line}: {target} -> {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in load(dest).anchors():
            problems.append(f"line {line}: {target} -> no heading '#{anchor}' in {dest.name}")
    return problems


def command_problems(doc: Doc) -> list[str]:
    problems = []
    for line, text in doc.command_lines():
        for program, words in _commands(text):
            if program == "buildwatch":
                found = _check_buildwatch(words)
            else:
                found = _check_script(program, words)
            problems.extend(f"line {line}: {p}" for p in found)
    return problems


def path_problems(doc: Doc) -> list[str]:
    problems = []
    text = re.sub(r"\b[a-z][a-z0-9+.-]*://\S+", lambda m: " " * len(m.group(0)), doc.text)
    for m in PATH_RE.finditer(text):
        mentioned = m.group(1).rstrip(".")
        if any(mark in mentioned for mark in ("*", "<", "{", "...")):
            continue  # a pattern or a placeholder, not a path
        if not (ROOT / mentioned).exists():
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"line {line}: {mentioned} does not exist")
    return problems


# --- the tests ---------------------------------------------------------------------------------


def _report(path: Path, problems: list[str]) -> str:
    return f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOC_FILES, ids=IDS)
def test_relative_links_exist(path):
    problems = link_problems(load(path))
    assert not problems, _report(path, problems)


@pytest.mark.parametrize("path", DOC_FILES, ids=IDS)
def test_quoted_commands_exist(path):
    problems = command_problems(load(path))
    assert not problems, _report(path, problems)


@pytest.mark.parametrize("path", DOC_FILES, ids=IDS)
def test_mentioned_paths_exist(path):
    problems = path_problems(load(path))
    assert not problems, _report(path, problems)


def test_readme_is_a_front_door():
    readme = load(ROOT / "README.md")
    first_screen = "\n".join(readme.text.splitlines()[:FIRST_SCREEN_LINES])
    for page in USER_PAGES:
        assert f"]({page}" in first_screen, f"README's first screen does not link {page}"
    linked = {target.partition("#")[0] for _, target in readme.links()}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert str(page.relative_to(ROOT)) in linked, f"README does not link {page.name}"


def test_readme_test_command_is_what_ci_runs():
    readme = load(ROOT / "README.md")
    commands = [line.strip() for block in readme.blocks for _, line in block]
    assert "python -m pytest" in commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "python -m pytest" in [line.strip() for line in ci]


def test_the_checks_catch_what_they_should(tmp_path):
    """Not vacuous: a missing file or heading, subcommand, option, script and path are caught."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Title\n\n[ok](#title-1) [bad](#nope) [gone](missing.md) [here](page.md)\n\n"
        "`buildwatch run --baseline B.tif --no-such-option 1`, `scripts/bench_run.py --nope`\n\n"
        "```bash\nbuildwatch frobnicate\nbuildwatch cases list|export --registry r.gpkg \\\n"
        "    --status new   # a comment --not-an-option\nbuildwatch models lst --models m\n"
        "python scripts/no_such_script.py\n```\n\nSee configs/no-such.yaml and configs/.\n",
        encoding="utf-8",
    )
    doc = Doc(page)
    assert {"title", "title-1"} <= doc.anchors()
    assert [p.split(" -> ")[0] for p in link_problems(doc)] == [
        "line 5: #nope",
        "line 5: missing.md",
    ]
    problems = command_problems(doc)
    for needle in ("--no-such-option", "frobnicate", "models lst", "no_such_script.py", "--nope"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert len(problems) == 5, problems
    assert path_problems(doc) == [
        "line 14: scripts/no_such_script.py does not exist",
        "line 17: configs/no-such.yaml does not exist",
    ]
    slugs = {
        "Throughput: the nightly run against SAHI + ultralytics": (
            "throughput-the-nightly-run-against-sahi--ultralytics"
        ),
        "Checking an installation: `buildwatch doctor`": (
            "checking-an-installation-buildwatch-doctor"
        ),
        "Retraining from the district's own labels": "retraining-from-the-districts-own-labels",
        "Two views, one verdict (the second view)": "two-views-one-verdict-the-second-view",
    }
    for heading, slug in slugs.items():
        assert github_slug(heading) == slug
