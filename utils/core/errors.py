"""The one error base. Every error this project raises on purpose derives from IcyfaceError:
its message is one line that names the fix, and each CLI catches the base in one place
(utils.core.cli.run_cli), prints "error: <message>" and exits with the class's exit_code."""
from __future__ import annotations

# Exit codes a CLI returns: 2 for bad input or a failed stage (as argparse does for a bad flag),
# 75 (EX_TEMPFAIL from sysexits.h) for a stop the same command resumes.
INPUT_EXIT_CODE = 2


class IcyfaceError(Exception):
    """Bad input or a stage that cannot go on; str(err) is the one line to print."""

    exit_code = INPUT_EXIT_CODE
