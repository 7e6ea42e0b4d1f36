"""What the six command lines share: one way to read flags and one way to fail.

* `Parser`: an argparse.ArgumentParser where every long flag takes both spellings (--input-dir
  and --input_dir), a wrong flag or value is refused in one line with the closest valid one and
  a pointer to --help (no usage dump; exit 2), and --help shows each default once.
* `add_field_flags`: one flag per field of a settings dataclass, from the field's metadata.
* `entry_point` / `run_cli`: the one place a CLI catches the project's errors
  (utils.core.errors.IcyfaceError): "error: <message>" on stderr, exit with the error's code.

Nothing heavy is imported here (no TensorFlow, Keras or numpy): a command parses and checks
its flags before it loads anything that does work.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import os
import sys

from utils.core.errors import IcyfaceError
from utils.core.stop_requests import StopRequested, stopped_message

# Field annotations (strings, under `from __future__ import annotations`) -> the argparse type.
FIELD_TYPES = {"str": str, "int": int, "float": float, "int | None": int}


def flag_spelling(name: str) -> str:
    """--kebab-case of a setting's name (old names such as L2 keep their case)."""
    return "--" + name.replace("_", "-")


def closest(word: str, candidates, cutoff: float = 0.5) -> str | None:
    """The candidate closest to word (difflib), or None when none is close."""
    match = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=cutoff)
    return match[0] if match else None


def _same_spelling(flag: str) -> str:
    return flag.replace("_", "-")


class HelpFormatter(argparse.HelpFormatter):
    """Each default shown once: "(default: X)" is added to a flag's help unless the help already
    speaks of its default or there is nothing to show (None, False, an empty value, a suppressed
    default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or default is argparse.SUPPRESS
                or default is None or default is False or default in ("", [], ())
                or (not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return text + " (default: %(default)s)"


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter, keeping the description's and epilog's own line breaks."""


class Parser(argparse.ArgumentParser):
    """argparse, with the project's conventions (see the module's docstring). prog may be the
    script's path (__file__): its file name is what usage and errors show."""

    def __init__(self, prog: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(prog=os.path.basename(prog) if prog else None, **kwargs)

    # ---- both spellings of every long flag, and abbreviations of either
    def _long_flags(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("--")]

    def _known_spelling(self, flag: str) -> str | None:
        """The flag as the parser defines it: itself, its other spelling (- for _ or _ for -),
        or the one flag it abbreviates; None when it names no flag (or several)."""
        if flag in self._option_string_actions:
            return flag
        key = _same_spelling(flag)
        exact = [s for s in self._long_flags() if _same_spelling(s) == key]
        if exact:
            return exact[0]
        if self.allow_abbrev:
            prefixed = {}
            for s in self._long_flags():
                if _same_spelling(s).startswith(key):
                    prefixed.setdefault(self._option_string_actions[s], s)
            if len(prefixed) == 1:
                return next(iter(prefixed.values()))
        return None

    def _spelled(self, args) -> list[str]:
        """args with every long flag in the parser's own spelling (values and anything after "--" untouched)."""
        out, flags_over = [], False
        for arg in args:
            if flags_over or not arg.startswith("--") or arg == "--":
                flags_over = flags_over or arg == "--"
                out.append(arg)
                continue
            flag, eq, value = arg.partition("=")
            out.append((self._known_spelling(flag) or flag) + eq + value)
        return out

    def unknown_flag_message(self, flag: str) -> str:
        """An unknown flag, with the closest valid one (or the flags an abbreviation could mean)."""
        key = _same_spelling(flag)
        several = sorted({s for s in self._long_flags() if _same_spelling(s).startswith(key)})
        if len(several) > 1:
            return f"ambiguous flag {flag}: could be {', '.join(several)}"
        match = closest(key, self._long_flags())
        return f"unknown flag {flag}" + (f"; did you mean {match}?" if match else "")

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self._spelled(sys.argv[1:] if args is None else list(args)), namespace)

    def parse_args(self, args=None, namespace=None):
        """Unknown flags are refused before anything else, so a mistyped flag is what is named
        (not a missing required one, or its value taken for a positional)."""
        args = self._spelled(sys.argv[1:] if args is None else [str(a) for a in args])
        for arg in args:
            if arg == "--":
                break
            flag = arg.partition("=")[0]
            if arg.startswith("--") and flag not in self._option_string_actions:
                self.error(self.unknown_flag_message(flag))
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unexpected argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}")
        return namespace

    # ---- one line per mistake
    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            hint = closest(str(value), action.choices)
            raise argparse.ArgumentError(action, f"{value!r} is not one of {', '.join(map(str, action.choices))}"
                                         + (f"; did you mean {hint!r}?" if hint else ""))

    def error(self, message: str):
        """One line, exit 2: what is wrong and where the flags are explained (no usage dump)."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class DeprecatedAlias(argparse.Action):
    """An older flag name that still works, with one line on stderr naming the flag to use:
    add_argument("--image-size", dest="crop_size", action=DeprecatedAlias, replacement="--crop-size")."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated here; use {self.replacement} (the same setting)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_field_flags(parser: argparse.ArgumentParser, dataclass_fields, *, skip=(), renamed: dict | None = None,
                    default_label: str = "default"):
    """One flag per field of a settings dataclass: --kebab-case (the snake_case spelling works too,
    as for every flag of Parser) and --<old name> for each old name in `renamed` (old -> field
    name); help from the field's metadata "help", allowed values from its metadata "choices" (a
    tuple), the type from its annotation, --x / --no-x for a bool. Flags left out are absent from
    the parsed namespace (default SUPPRESS), so another source's values (an experiment file)
    stand; each help shows the field's own default once, as "(<default_label>: X)"."""
    old_names: dict[str, list[str]] = {}
    for old, new in (renamed or {}).items():
        old_names.setdefault(new, []).append(old)
    for f in dataclass_fields:
        if f.name in skip:
            continue
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        shown = "" if f.default in ("", None) else f" ({default_label}: {f.default})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f.metadata.get("help", "") + shown)
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = FIELD_TYPES[kind]
            kwargs["metavar"] = f.name.upper()
            choices = f.metadata.get("choices") or ()
            if choices:
                kwargs["choices"] = choices
                kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        parser.add_argument(flag_spelling(f.name), *map(flag_spelling, old_names.get(f.name, ())), **kwargs)


def parse_choices(text: str, choices, what: str) -> tuple[str, ...]:
    """A comma-separated list of names from `choices` (case-insensitive, each at most once), for
    flags such as --detectors and --align; ValueError naming the bad entries, the closest valid
    name and the choices."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in choices]
    if not names or unknown:
        hint = closest(unknown[0], choices) if unknown else None
        raise ValueError(f"unknown {what} {', '.join(unknown) or '(none given)'}"
                         + (f"; did you mean {hint!r}?" if hint else "") + f" (one of {', '.join(choices)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} listed twice in {text!r}")
    return names


def error_line(err: IcyfaceError) -> str:
    """The one line a CLI prints for one of the project's errors."""
    return stopped_message(err) if isinstance(err, StopRequested) else f"error: {err}"


def run_cli(main, argv=None) -> int:
    """main(argv)'s exit code; the project's errors (IcyfaceError) become one line on stderr and
    their exit_code (2 for bad input or a failed stage, 75 for a honoured stop)."""
    try:
        return main(argv)
    except IcyfaceError as err:
        print(error_line(err), file=sys.stderr, flush=True)
        return err.exit_code


def entry_point(main):
    """Decorator for a CLI's main(argv=None) -> int: the same function, run by run_cli."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        return run_cli(main, argv)
    return wrapped
