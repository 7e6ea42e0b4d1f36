"""The documentation's commands and links stay true to the code.

Every `python <script>.py …` line in a shell code block of README.md, docs/*.md, CONTRIBUTING.md
and configs/README.md is parsed by that script's own argparse parser (its build_parser(), or, for
the benchmark scripts, which build theirs inside main(), the parser main() builds), so a flag
renamed or removed in the code fails here, naming the document and the line. Nothing is run and
TensorFlow is not imported: a parser is built and given the words, nothing more. Words written
as `…` or `...` stand for "more arguments" and are dropped.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "configs" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
PYTHON = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "2>&1", "&", "<"}
ELLIPSES = {"…", "..."}


# ---------------------------------------------------------------- finding the commands

def code_blocks(text: str):
    """(info string, first line number, body) of each fenced code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
            body.append(lines[i])
            i += 1
        yield fence.group(2).lower(), start + 1, body
        i += 1


def logical_lines(body: list[str], first: int):
    """(line number, text) with backslash continuations joined."""
    buf, at = "", None
    for n, line in enumerate(body, first):
        at = at or n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield at, buf + line
        buf, at = "", None
    if buf:
        yield at, buf


def python_commands(words: list[str]):
    """(script path or module, its arguments) of every `python X.py …` / `python -m M …` in a
    shell line's words, including inside quoted words (sbatch --wrap "python …")."""
    for i, word in enumerate(words):
        if " " in word and "python" in word:
            try:
                yield from python_commands(shlex.split(word, comments=True))
            except ValueError:
                pass
        if not PYTHON.match(word) or i + 1 >= len(words):
            continue
        rest = words[i + 1:]
        if rest[0] == "-m" and len(rest) > 1:
            target, args = rest[1], rest[2:]
            path = ROOT / (target.replace(".", "/") + ".py")
            if not path.is_file():  # python -m venv, -m pytest: not this project's scripts
                continue
            target = str(path.relative_to(ROOT))
        elif rest[0].endswith(".py"):
            target, args = rest[0], rest[1:]
        else:
            continue
        cut = next((j for j, a in enumerate(args) if a in SHELL_OPERATORS), len(args))
        yield target, [a for a in args[:cut] if a not in ELLIPSES]


def documented_commands():
    """(doc, line, script, args) of every python command in the shell code blocks of the docs."""
    found = []
    for doc in DOCS:
        for lang, first, body in code_blocks(doc.read_text(encoding="utf-8")):
            if lang not in SHELL_BLOCKS:
                continue
            for line_no, line in logical_lines(body, first):
                if not re.search(r"\bpython", line):
                    continue
                try:
                    words = shlex.split(line, comments=True)
                except ValueError as err:
                    raise AssertionError(f"{doc.relative_to(ROOT)}:{line_no}: not a shell line ({err}): {line}")
                for script, args in python_commands(words):
                    found.append((str(doc.relative_to(ROOT)), line_no, script, args))
    return found


# ---------------------------------------------------------------- parsing them

class _Parsed(Exception):
    pass


def _parse_through_main(module, args: list[str]) -> argparse.Namespace:
    """A script that builds its parser inside main(): run main() until it parses, with `args`."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, _ignored=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args):
        try:
            module.main()
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError(f"{module.__name__}.main() returned without parsing its arguments")


def parse_command(script: str, args: list[str]):
    """Parse `python script args` with the script's own parser; raises AssertionError with the
    parser's own message when it refuses the words."""
    module_name = script[:-3].replace("/", ".")
    if not (ROOT / script).is_file():
        raise AssertionError(f"no script {script} in the repository")
    module = importlib.import_module(module_name)
    from utils.core.errors import IcyfaceError

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if hasattr(module, "build_parser"):
                namespace = module.build_parser().parse_args(args)
                if module_name == "train_classifier" and namespace.config is None:
                    module.parse_config(args)  # presets, backbone names and values, as the run checks them
            else:
                namespace = _parse_through_main(module, args)
                if module_name == "benchmarks.small_data_lfw" and namespace.recipe_overrides:
                    from train_classifier import parse_config

                    parse_config(["--preset", module.RECIPES[namespace.recipe][0], *namespace.recipe_overrides])
    except SystemExit as exit_:
        raise AssertionError(f"refused (exit {exit_.code}): {err.getvalue().strip()}") from None
    except IcyfaceError as exc:  # a TrainingError from the config loader: a bad preset or setting
        raise AssertionError(f"refused: {type(exc).__name__}: {exc}") from None
    return namespace


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_stage():
    scripts = {c[2] for c in COMMANDS}
    for script in ("demo.py", "preprocess_data.py", "train_classifier.py", "validate_on_lfw.py", "verify_faces.py",
                   "export_model.py", "benchmarks/report.py"):
        assert script in scripts, f"no documented command runs {script}"


@pytest.mark.parametrize("doc,line,script,args", COMMANDS,
                         ids=[f"{d}:{n}:{s}" for d, n, s, _ in COMMANDS])
def test_documented_command_parses(doc, line, script, args):
    try:
        parse_command(script, args)
    except AssertionError as err:
        pytest.fail(f"{doc}:{line}: python {script} {shlex.join(args)}\n  {err}")


def test_a_renamed_flag_is_caught():
    """The check itself: a flag the parser does not have, and a bad preset, are refused."""
    with pytest.raises(AssertionError, match="--no-such-flag"):
        parse_command("preprocess_data.py", ["--no-such-flag", "1"])
    with pytest.raises(AssertionError, match="no_such_preset"):
        parse_command("train_classifier.py", ["--preset", "no_such_preset"])
    with pytest.raises(AssertionError, match="--no-such-flag"):
        parse_command("benchmarks/small_data_lfw.py", ["--no-such-flag"])
    with pytest.raises(AssertionError, match="epochz"):
        parse_command("benchmarks/small_data_lfw.py", ["--", "--epochz", "3"])  # a train_classifier.py flag misspelt


def test_finding_commands_in_shell_lines():
    words = shlex.split('sbatch --wrap "python preprocess_data.py --merge" && TF_CONFIG=x python -m utils.preprocess.'
                        'identity_overlap --names a.txt ... > out.txt')
    assert list(python_commands(words)) == [("preprocess_data.py", ["--merge"]),
                                            ("utils/preprocess/identity_overlap.py", ["--names", "a.txt"])]
    assert list(python_commands(shlex.split("python3 -m venv .venv && .venv/bin/python -m pytest"))) == []


def test_parsing_the_documented_commands_imports_no_tensorflow():
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests import test_docs as t\n"
            "for doc, line, script, args in t.COMMANDS: t.parse_command(script, args)\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["False", "False"], "parsing a documented command imported TensorFlow or Keras"


def test_readme_test_command_is_what_ci_runs():
    """.ci/run runs 'the README's test command, verbatim': its last command is in a README code block."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    readme_lines = {line.strip() for lang, _, body in code_blocks((ROOT / "README.md").read_text()) for line in body}
    assert ci[-1] in readme_lines, f"the README does not show CI's test command {ci[-1]!r}"


# ---------------------------------------------------------------- links

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    in_code, out = False, set()
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_and_anchors_exist(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


def test_slug_follows_github():
    assert slug("## Ensembles (`benchmarks/ensemble_lfw.py`)".lstrip("#")) == "ensembles-benchmarksensemble_lfwpy"
    assert slug("2. One file instead of 494,414: insightface packs") == "2-one-file-instead-of-494414-insightface-packs"


def test_readme_is_a_short_guide():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    for doc in ("docs/benchmarks.md", "docs/scaling.md", "docs/reliability.md", "docs/training.md", "CONTRIBUTING.md"):
        assert doc in text, f"the README does not link {doc}"
    assert "pretrained" in text.lower()


def test_every_result_json_is_linked_from_the_benchmark_docs():
    linked = (ROOT / "docs" / "benchmarks.md").read_text() + (ROOT / "docs" / "serving.md").read_text()
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        json.loads(path.read_text())  # and every JSON is valid
        assert f"results/{path.name})" in linked, f"{path.name} is in no table of docs/benchmarks.md or docs/serving.md"
