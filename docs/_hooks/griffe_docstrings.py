"""Griffe extension: read pylo's grouped argument entries as the Google parser expects them.

Several pylo docstrings document related arguments together, and a long list of names wraps onto
a second line before its colon::

    Args:
        input_size, hidden_size, hidden_layers, lstm_input_size, lstm_hidden_size,
        param_inits: network geometry used when a checkpoint does not state its own.

Griffe's Google parser takes each line at the entry indentation as a new entry, finds no colon in
the first one, warns and drops the entry. This extension joins such a wrapped list of names (a line
of comma-separated names ending with a comma, followed by a line at the same indentation) into one
line before the docstring is parsed, so the entry is rendered and the build stays warning-free. It
also drops ``# doctest:`` directives from example lines (Google "Example:" sections are rendered as
admonitions, where griffe does not trim them). The source files are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# a line holding only names (``initial_*_decays`` included) separated by commas, ending with a comma
_WRAPPED_NAMES = re.compile(r"^(?P<indent>[ \t]*)(?:[\w*]+,[ \t]*)+$")
# a doctest directive at the end of an example line (``# doctest: +SKIP``): noise on a rendered page
_DOCTEST_FLAGS = re.compile(r"[ \t]*#[ \t]*doctest:[ \t]*[+-]\w+(?:[ \t]*,[ \t]*[+-]\w+)*[ \t]*$", re.MULTILINE)


def join_wrapped_names(text: str) -> str:
    """``text`` with every wrapped list of argument names joined to the line that continues it."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _WRAPPED_NAMES.match(line)
        while match and i + 1 < len(lines):
            following = lines[i + 1]
            indent = match["indent"]
            if not following.startswith(indent) or following[len(indent):len(indent) + 1].isspace():
                break
            line = f"{line.rstrip()} {following.strip()}"
            i += 1
            match = _WRAPPED_NAMES.match(line)
        out.append(line)
        i += 1
    return "\n".join(out)


class PyloDocstrings(griffe.Extension):
    """Rewrite each object's docstring (in memory) as soon as griffe creates the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _DOCTEST_FLAGS.sub("", join_wrapped_names(obj.docstring.value))
