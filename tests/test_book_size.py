"""hdr_lib/book computes numbers, tables and figures; the sentences live in the chapters. Its size is the check that
prose has not crept back into f-strings: at most BOOK_CODE_LINES code lines (issue 28, from about 2,000)."""

import ast
import io
import tokenize
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "hdr_lib" / "book"
BOOK_CODE_LINES = 1100


def code_lines(source: str) -> int:
    """Non-blank lines that are neither comments nor a module, class or function docstring."""
    tree = ast.parse(source)
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                skip.update(range(first.lineno, first.end_lineno + 1))
    code = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
            continue
        code.update(range(token.start[0], token.end[0] + 1))
    return len(code - skip)


def test_code_lines_counts_code_only():
    source = '"""module."""\n\n# a comment\ndef f(x):\n    """doc\n    more."""\n    return (x +\n            1)  # why\n'
    assert code_lines(source) == 3


def test_book_library_is_small():
    counts = {path.name: code_lines(path.read_text()) for path in sorted(BOOK.glob("*.py"))}
    assert sum(counts.values()) <= BOOK_CODE_LINES, counts
