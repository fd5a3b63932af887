"""Reading SQL text: fingerprints, statement kind and referenced tables.

Everything here works on the statement string a driver receives, so it covers ORM statements,
Core constructs, ``text()`` and ``exec_driver_sql()`` alike. The result for one statement string
never changes, so :func:`analyze` is memoised per string (and per quoting rule); the per-query
cost after the first execution of a statement is one cache lookup.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["StatementInfo", "StatementKind", "analyze", "fingerprint"]


class StatementKind(enum.StrEnum):
    """What a statement does, from its leading keyword (after any ``WITH`` clause)."""

    SELECT = "select"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    DDL = "ddl"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What one statement string is: its fingerprint, kind and the tables it names."""

    fingerprint: str
    fingerprint_id: str
    kind: StatementKind
    tables: tuple[str, ...]


# Token kinds. Literals and placeholders both become "?" in a fingerprint.
_WS, _COMMENT, _STRING, _NUMBER, _PARAM, _QIDENT, _WORD, _OP = range(8)

_COMMON_PATTERNS = [
    (_WS, r"\s+"),
    (_COMMENT, r"--[^\n]*|/\*.*?\*/"),
    (_STRING, r"\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?(tag)(?P=tag))\$"),  # PostgreSQL dollar quoting
    (_PARAM, r"\$\d+|%\(\w+\)s|%s|\?|(?<!:):(?!:)[A-Za-z_]\w*|:\d+"),
    (_QIDENT, r'"(?:[^"]|"")*"|`(?:[^`]|``)*`'),
    (_NUMBER, r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"),
    (_WORD, r"[^\W\d][\w$]*"),
    (_OP, r"::|\.\.\.|<>|!=|<=|>=|\|\||->>|->|#>>|#>|@>|<@|&&|<<|>>|!~\*|~\*|!~|.|\n"),
]
_STANDARD_STRING = r"[Ee]'(?:[^'\\]|\\.|'')*'|[NnXxBbUu]?&?'(?:[^']|'')*'"
_BACKSLASH_STRING = r"[NnXxBb_]?'(?:[^'\\]|\\.|'')*'"
# MySQL and MariaDB: "#" starts a comment that runs to the end of the line, and "..." is a
# string literal with backslash escapes, or a name under ANSI_QUOTES. The reader cannot know the
# server's sql_mode, so "..." stays a name (a table is never missed), escapes and all.
_HASH_COMMENT = r"#[^\n]*"
_BACKSLASH_QIDENT = r'"(?:[^"\\]|\\.|"")*"|`(?:[^`]|``)*`'


def _compile(*, mysql: bool) -> re.Pattern[str]:
    comments = _COMMON_PATTERNS[1][1] + (f"|{_HASH_COMMENT}" if mysql else "")
    patterns = [
        _COMMON_PATTERNS[0],
        (_COMMENT, comments),
        (_STRING, _BACKSLASH_STRING if mysql else _STANDARD_STRING),
        *_COMMON_PATTERNS[2:],
    ]
    if mysql:
        patterns = [(_QIDENT, _BACKSLASH_QIDENT) if k == _QIDENT else (k, p) for k, p in patterns]
    return re.compile(
        "|".join(f"(?P<k{kind}_{i}>{pattern})" for i, (kind, pattern) in enumerate(patterns)),
        re.DOTALL,
    )


# MySQL and MariaDB treat a backslash in a string literal as an escape; standard SQL does not.
_TOKENIZERS = {False: _compile(mysql=False), True: _compile(mysql=True)}

# Words after which a "-" or "+" starts a signed literal rather than a subtraction.
_EXPRESSION_STARTERS = frozenset(
    "select where and or not then else when values in between like ilike is case return "
    "limit offset having on set by as with distinct all any some array interval".split()
)
_LITERAL_WORDS = frozenset({"true", "false"})
_DDL_WORDS = frozenset(
    "create alter drop truncate comment grant revoke rename reindex vacuum analyze".split()
)
_KIND_WORDS = {
    "select": StatementKind.SELECT,
    "values": StatementKind.SELECT,
    "table": StatementKind.SELECT,
    "insert": StatementKind.INSERT,
    "replace": StatementKind.INSERT,
    "upsert": StatementKind.INSERT,
    "update": StatementKind.UPDATE,
    "delete": StatementKind.DELETE,
    "merge": StatementKind.UPDATE,
}
# Words whose following identifier is a table name.
_TABLE_INTRODUCERS = frozenset({"from", "join", "into", "update", "table", "truncate", "using"})
# Words that may stand between an introducer and the table name.
_TABLE_NOISE = frozenset({"only", "if", "not", "exists", "lateral", "temporary", "temp"})
# Words that end a FROM list.
_CLAUSE_WORDS = frozenset(
    "where group order having limit offset union intersect except on using join inner left "
    "right full cross natural set values returning window for fetch select lock with".split()
)


def _tokens(sql: str, backslash_escapes: bool) -> list[tuple[int, str]]:
    """Significant tokens of ``sql`` as (kind, text); whitespace and comments dropped."""
    out: list[tuple[int, str]] = []
    for match in _TOKENIZERS[backslash_escapes].finditer(sql):
        group = match.lastgroup
        assert group is not None
        kind = int(group[1 : group.index("_")])
        if kind in (_WS, _COMMENT):
            continue
        text = match.group()
        if kind == _WORD:
            lowered = text.lower()
            if lowered in _LITERAL_WORDS:
                out.append((_NUMBER, text))
            else:
                out.append((_WORD, lowered))
        else:
            out.append((kind, text))
    while out and out[-1] == (_OP, ";"):
        out.pop()  # a trailing semicolon is not part of the statement's shape
    return out


def _is_literal(kind: int) -> bool:
    return kind in (_STRING, _NUMBER, _PARAM)


def _normalise(tokens: list[tuple[int, str]]) -> list[str]:
    """Literals to ``?``, signs folded into literals, words lower-cased."""
    out: list[str] = []
    previous: tuple[int, str] | None = None
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if (
            kind == _OP
            and text in ("-", "+")
            and i + 1 < len(tokens)
            and _is_literal(tokens[i + 1][0])
            and (
                previous is None
                or (previous[0] == _OP and previous[1] not in (")", "]"))
                or (previous[0] == _WORD and previous[1] in _EXPRESSION_STARTERS)
            )
        ):
            i += 1  # a signed literal is still a literal
            continue
        out.append("?" if _is_literal(kind) else text)
        previous = (kind, text)
        i += 1
    return out


def _group_end(words: list[str], start: int) -> int:
    """Index just past the parenthesised group opening at ``start``."""
    depth = 0
    for i in range(start, len(words)):
        if words[i] == "(":
            depth += 1
        elif words[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(words)


def _items(group: list[str]) -> list[list[str]]:
    """The comma-separated items of a parenthesised group, split at its own depth."""
    items: list[list[str]] = [[]]
    depth = 0
    for word in group[1:-1]:
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        if word == "," and depth == 0:
            items.append([])
        else:
            items[-1].append(word)
    return items


def _is_value_list(group: list[str]) -> bool:
    """True for a list of same-shaped values: ``(?, ?)``, ``(?::integer, ?::integer)``,
    ``((?, ?), (?, ?))``. Each item holds a placeholder and no subquery."""
    items = _items(group)
    first = items[0]
    return (
        "?" in first
        and "select" not in first
        and "..." not in first
        and all(item == first for item in items[1:])
    )


def _collapse_lists(words: list[str]) -> list[str]:
    """``IN (?, ?, ?)`` and multi-row ``VALUES (...), (...)`` to one form, whatever the length.

    An IN-list keeps the shape of its items (a cast, a tuple's arity) but not their number.
    """
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        out.append(word)
        i += 1
        if word not in ("in", "values") or i >= len(words) or words[i] != "(":
            continue
        end = _group_end(words, i)
        group = _collapse_lists(words[i:end])
        if word == "in":
            if _is_value_list(group):
                out += ["(", *_items(group)[0], "...", ")"]
                i = end
            continue
        # VALUES: a run of identical row groups stands for any number of rows
        out += group
        i = end
        while i + 1 < len(words) and words[i] == "," and words[i + 1] == "(":
            row_end = _group_end(words, i + 1)
            if _collapse_lists(words[i + 1 : row_end]) != group:
                break
            i = row_end
    return out


_NO_SPACE_BEFORE = frozenset({",", ")", ".", "::", "..."})
_NO_SPACE_AFTER = frozenset({"(", ".", "::"})


# Keywords that keep a space before "(" (everything else before "(" is a function name).
_SPACED_KEYWORDS = frozenset(
    "in values as and or not exists on using from join where select when then else into any all "
    "some over with by set returning table".split()
)


def _join(words: list[str]) -> str:
    parts: list[str] = []
    previous = ""
    for word in words:
        call = word == "(" and previous[:1].isalpha() and previous not in _SPACED_KEYWORDS
        if parts and not call and word not in _NO_SPACE_BEFORE and previous not in _NO_SPACE_AFTER:
            parts.append(" ")
        parts.append(word)
        previous = word
    return "".join(parts)


def _statement_kind(tokens: list[tuple[int, str]]) -> StatementKind:
    if tokens and tokens[0] == (_OP, "("):
        return StatementKind.SELECT
    if not tokens or tokens[0][0] != _WORD:
        return StatementKind.OTHER
    first = tokens[0][1]
    if first in _DDL_WORDS:
        return StatementKind.DDL
    if first == "with":
        depth = 0
        for kind, text in tokens[1:]:
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
            elif depth == 0 and kind == _WORD and text in _KIND_WORDS:
                return _KIND_WORDS[text]
        return StatementKind.OTHER
    return _KIND_WORDS.get(first, StatementKind.OTHER)


def _identifier(kind: int, text: str) -> str:
    if kind == _QIDENT:
        quote = text[0]
        return text[1:-1].replace(quote * 2, quote)
    return text


def _read_name(tokens: list[tuple[int, str]], i: int) -> tuple[str | None, int]:
    """A possibly schema-qualified name starting at ``i``; (None, i) if there is none."""
    parts: list[str] = []
    while i < len(tokens) and tokens[i][0] in (_WORD, _QIDENT):
        parts.append(_identifier(*tokens[i]))
        i += 1
        if i + 1 < len(tokens) and tokens[i][1] == "." and tokens[i + 1][0] in (_WORD, _QIDENT):
            i += 1
            continue
        break
    return (".".join(parts) if parts else None), i


def _cte_names(tokens: list[tuple[int, str]]) -> set[str]:
    """Names defined by ``WITH name AS (...)``: they are not tables."""
    names: set[str] = set()
    for i, (kind, text) in enumerate(tokens):
        k = i + 1
        while k < len(tokens) and tokens[k] in ((_WORD, "not"), (_WORD, "materialized")):
            k += 1  # AS [NOT] MATERIALIZED (
        if kind == _WORD and text == "as" and k < len(tokens) and tokens[k][1] == "(":
            j = i - 1
            if j >= 0 and tokens[j][1] == ")":  # name (col, col) AS (
                depth = 0
                while j >= 0:
                    if tokens[j][1] == ")":
                        depth += 1
                    elif tokens[j][1] == "(":
                        depth -= 1
                        if depth == 0:
                            break
                    j -= 1
                j -= 1
            if (
                j >= 1
                and tokens[j][0] in (_WORD, _QIDENT)
                and (tokens[j - 1][1] in (",", "with", "recursive"))
            ):
                names.add(_identifier(*tokens[j]))
    return names


# Statements whose TABLE keyword is followed by a comma-separated list of tables.
_TABLE_LIST_STATEMENTS = frozenset({"drop", "truncate", "lock"})
# Functions whose argument syntax uses FROM: EXTRACT(YEAR FROM x), SUBSTRING(x FROM 2), ...
_FROM_FUNCTIONS = frozenset({"extract", "substring", "trim", "overlay", "position"})


def _introduces_table(tokens: list[tuple[int, str]], i: int, kind: StatementKind) -> bool:
    """Whether the word at ``i`` is followed by a table name, judged from its neighbours."""
    text = tokens[i][1]
    before = tokens[i - 1][1] if i > 0 else ""
    if text == "from":
        return before != "distinct"  # IS [NOT] DISTINCT FROM
    if text == "update":
        return before not in ("for", "key", "do")  # FOR UPDATE, ON DUPLICATE KEY UPDATE, DO UPDATE
    if text in ("on", "references"):
        return kind is StatementKind.DDL
    return text in _TABLE_INTRODUCERS


def _tables(tokens: list[tuple[int, str]], kind: StatementKind) -> tuple[str, ...]:
    found: list[str] = []
    # For each open parenthesis: does it belong to a function with FROM in its arguments?
    paren_is_from_function: list[bool] = []
    i = 0
    while i < len(tokens):
        token_kind, text = tokens[i]
        if text == "(":
            previous = tokens[i - 1][1] if i > 0 else ""
            paren_is_from_function.append(previous in _FROM_FUNCTIONS)
        elif text == ")" and paren_is_from_function:
            paren_is_from_function.pop()
        i += 1
        if token_kind != _WORD:
            continue
        if text == "on" and i < len(tokens) and tokens[i][1] in ("delete", "update"):
            i += 1  # ON DELETE / ON UPDATE referential actions
            continue
        if not _introduces_table(tokens, i - 1, kind):
            continue
        if text == "on" and i < len(tokens) and tokens[i] == (_WORD, "column"):
            name, i = _read_name(tokens, i + 1)  # COMMENT ON COLUMN [schema.]table.column
            if name is not None and "." in name:
                found.append(name.rsplit(".", 1)[0])
            continue
        if text == "from" and paren_is_from_function and paren_is_from_function[-1]:
            continue
        in_list = text in ("from", "truncate", "using") or (
            text == "table" and tokens[0][1] in _TABLE_LIST_STATEMENTS
        )
        while True:
            while i < len(tokens) and tokens[i][0] == _WORD and tokens[i][1] in _TABLE_NOISE:
                i += 1
            name, after = _read_name(tokens, i)
            if name is None or (
                tokens[i][0] == _WORD and (name in _CLAUSE_WORDS or name in _TABLE_INTRODUCERS)
            ):
                break
            is_call = after < len(tokens) and tokens[after][1] == "("
            if not is_call or text in ("into", "table", "on", "references"):
                found.append(name)
            i = after
            if not in_list:
                break
            # skip an alias and anything else up to the next comma of this list
            depth = 0
            while i < len(tokens):
                word = tokens[i][1]
                if word == "(":
                    depth += 1
                elif word == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif depth == 0 and (
                    word == "," or (tokens[i][0] == _WORD and word in _CLAUSE_WORDS)
                ):
                    break
                i += 1
            if i < len(tokens) and tokens[i][1] == ",":
                i += 1
                continue
            break
    ctes = _cte_names(tokens)
    return tuple(sorted({name for name in found if name not in ctes}))


def analyze(sql: str, backslash_escapes: bool = False) -> StatementInfo:
    """Fingerprint, kind and tables of one statement string (memoised per string).

    ``backslash_escapes`` is true for MySQL and MariaDB, whose string literals treat ``\\`` as
    an escape character, ``"..."`` as a string and ``#`` as the start of a comment.
    """
    return _analyze(sql, backslash_escapes)  # positional: one memo entry however it is called


@lru_cache(maxsize=8192)
def _analyze(sql: str, backslash_escapes: bool) -> StatementInfo:
    tokens = _tokens(sql, backslash_escapes)
    text = _join(_collapse_lists(_normalise(tokens)))
    kind = _statement_kind(tokens)
    digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
    return StatementInfo(text, digest, kind, _tables(tokens, kind))


def fingerprint(sql: str, *, backslash_escapes: bool = False) -> str:
    """The shape of a statement: literals and parameters as ``?``, IN-lists and multi-row VALUES
    collapsed to one form, comments dropped, whitespace and case of unquoted words normalised.

    Two statements that differ only in values share a fingerprint; statements of different shape
    never do.
    """
    return analyze(sql, backslash_escapes).fingerprint
