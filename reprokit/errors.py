"""The one exception type that means "the user gave us something we cannot use".

Commands turn it into a single line on stderr and exit code 2; library callers can catch it.
"""

from __future__ import annotations


class ReprokitError(Exception):
    """A bad input (file, column, config, option value) described in one sentence."""

    exit_code = 2


class ReprokitWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI shows these as
    `warning: ...` lines even when it hides the warnings of dependencies."""
