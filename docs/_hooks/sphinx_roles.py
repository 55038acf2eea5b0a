"""MkDocs hook: pylo's docstrings cross-reference with Sphinx roles (``:class:`~pylo.models.MetaMLP```).

Markdown renders such a role as the literal text ``:class:`` followed by inline code. After each
page is converted, this hook drops the role prefix and, for fully qualified ``pylo.`` names, wraps
the code in an *optional* autorefs cross-reference: it becomes a link where the API reference
documents that object, and stays plain code (no warning) where it does not. A leading ``~`` shows
only the last component, as in Sphinx.
"""

from __future__ import annotations

import html
import re

ROLES = ("class", "func", "meth", "mod", "data", "attr", "exc", "obj")
_ROLE = re.compile(r":(?:py:)?(?:%s):<code>([^<]+)</code>" % "|".join(ROLES))


def _replace(match: re.Match) -> str:
    target = html.unescape(match.group(1)).strip()
    short = target.startswith("~")
    target = target.lstrip("~")
    shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
    code = f"<code>{html.escape(shown)}</code>"
    if not target.startswith("pylo."):
        return code
    return f'<autoref identifier="{html.escape(target, quote=True)}" optional>{code}</autoref>'


def on_page_content(html_text: str, **kwargs) -> str:
    """Rewrite the Sphinx roles of one page's HTML (MkDocs ``on_page_content`` event)."""
    return _ROLE.sub(_replace, html_text)
