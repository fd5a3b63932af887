"""Reading SQL text: fingerprints, statement kinds and referenced tables.

The property-based tests build statements from a small SQL grammar: a *skeleton* (statement
type, tables, columns, operators, conditions) that is rendered to text with everything that is
not shape drawn at random: literal values and placeholders of every DBAPI style, IN-list and
multi-row VALUES lengths, whitespace, comments and keyword case. Rendering one skeleton twice
must give one fingerprint; rendering a structurally changed skeleton must give another.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ormtune.querylog import StatementKind, _sqltext, analyze, fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------------------------
# Identifiers: never a word the tokeniser or the table finder treats specially.


def _module_keywords() -> frozenset[str]:
    """Every word in the keyword sets of ``_sqltext``, so this list follows the module."""
    words: set[str] = set()
    for value in vars(_sqltext).values():
        if isinstance(value, frozenset | dict) and value and all(isinstance(w, str) for w in value):
            words.update(w for w in value if w.isalpha())
    return frozenset(words)


SQL_KEYWORDS = frozenset(
    """
    select from where and or not in is null true false like ilike between values set order by
    limit offset as on join inner left right outer full cross natural using insert into update
    delete table create drop alter truncate with recursive union all distinct exists case when
    then else end group having returning default for key do conflict duplicate nothing lateral
    only if temporary temp asc desc nulls first last escape similar any some array interval cast
    collate references primary foreign unique check constraint index view window over partition
    fetch lock share nowait skip locked of materialized except intersect replace upsert merge
    savepoint begin commit rollback release return analyze vacuum grant revoke comment rename
    reindex extract substring trim overlay position year row rows filter within ignore to
    """.split()
)
KEYWORDS = SQL_KEYWORDS | _module_keywords()


def test_keyword_exclusions_follow_the_module_keyword_sets() -> None:
    # one word from each of the module's sets: expression starters, literal words, DDL words,
    # kind words, table introducers, noise, clause words, spaced keywords, FROM-functions
    module_words = {"ilike", "true", "vacuum", "upsert", "using", "lateral", "fetch", "over"}
    assert module_words | {"extract"} <= _module_keywords()
    assert not any(char in word for word in _module_keywords() for char in "(),.:")


@dataclass(frozen=True)
class Ident:
    """An identifier: unquoted ones are stored lower-case, quoted ones exactly."""

    name: str
    quoted: bool = False


unquoted_names = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_lowercase),
    st.text(alphabet=string.ascii_lowercase + string.digits + "_", max_size=6),
).filter(lambda word: word not in KEYWORDS)
quoted_names = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + ' _"$-', min_size=1, max_size=8),
    st.sampled_from(sorted(SQL_KEYWORDS)),  # "order", "user", "select": quoted, they are names
)
quoted_identifiers = quoted_names.map(lambda name: Ident(name, quoted=True))
unquoted_identifiers = unquoted_names.map(Ident)
identifiers = st.integers(0, 4).flatmap(
    lambda n: quoted_identifiers if n == 0 else unquoted_identifiers
)
maybe_identifiers = st.none() | identifiers


# --------------------------------------------------------------------------------------------
# The skeleton of a statement: everything that is shape, nothing that is value.


@dataclass(frozen=True)
class TableRef:
    name: Ident
    schema: Ident | None = None

    def key(self) -> str:
        """The name :func:`analyze` reports for this table."""
        return ".".join(part.name for part in (self.schema, self.name) if part is not None)


@dataclass(frozen=True)
class Column:
    name: Ident
    qualifier: Ident | None = None


COMPARISONS = ("=", "<", ">", "<>", "!=", "<=", ">=")
OPERATORS = (
    *COMPARISONS,
    *("LIKE", "NOT LIKE", "BETWEEN", "NOT BETWEEN", "IN", "NOT IN", "IS NULL", "IS NOT NULL"),
)


@dataclass(frozen=True)
class Condition:
    columns: tuple[Column, ...]  # more than one only for a tuple IN
    op: str
    connector: str = "AND"  # joins it to the condition before it


@dataclass(frozen=True)
class Join:
    how: str
    table: TableRef
    alias: Ident | None
    left: Column
    right: Column


@dataclass(frozen=True)
class Select:
    columns: tuple[Column, ...]
    table: TableRef
    alias: Ident | None
    joins: tuple[Join, ...]
    where: tuple[Condition, ...]
    limit: bool


@dataclass(frozen=True)
class Insert:
    table: TableRef
    columns: tuple[Ident, ...]


@dataclass(frozen=True)
class Update:
    table: TableRef
    columns: tuple[Ident, ...]
    where: tuple[Condition, ...]


@dataclass(frozen=True)
class Delete:
    table: TableRef
    where: tuple[Condition, ...]


Statement = Select | Insert | Update | Delete


def expected_kind(statement: Statement) -> StatementKind:
    return {
        Select: StatementKind.SELECT,
        Insert: StatementKind.INSERT,
        Update: StatementKind.UPDATE,
        Delete: StatementKind.DELETE,
    }[type(statement)]


def expected_tables(statement: Statement) -> tuple[str, ...]:
    tables = [statement.table]
    if isinstance(statement, Select):
        tables += [join.table for join in statement.joins]
    return tuple(sorted({table.key() for table in tables}))


# Built once: creating strategies inside a test is what makes it slow.
schemas = st.integers(0, 3).flatmap(lambda n: identifiers if n == 0 else st.none())
table_refs = st.builds(TableRef, identifiers, schemas)
columns = st.builds(Column, identifiers, maybe_identifiers)
connectors = st.sampled_from(["AND", "OR"])
single_conditions = st.builds(
    lambda column, op, connector: Condition((column,), op, connector),
    columns,
    st.sampled_from(OPERATORS),
    connectors,
)
tuple_conditions = st.builds(
    lambda tuple_columns, op, connector: Condition(tuple(tuple_columns), op, connector),
    st.lists(columns, min_size=2, max_size=3),
    st.sampled_from(["IN", "NOT IN"]),
    connectors,
)
conditions = st.integers(0, 7).flatmap(lambda n: tuple_conditions if n == 0 else single_conditions)
joins = st.builds(
    Join,
    st.sampled_from(["JOIN", "INNER JOIN", "LEFT JOIN", "LEFT OUTER JOIN"]),
    table_refs,
    maybe_identifiers,
    columns,
    columns,
)
where_clauses = st.lists(conditions, max_size=3).map(tuple)
column_lists = st.lists(columns, min_size=1, max_size=4).map(tuple)
name_lists = st.lists(identifiers, min_size=1, max_size=4).map(tuple)
join_lists = st.lists(joins, max_size=2).map(tuple)
statement_types = st.sampled_from([Select, Insert, Update, Delete])


@st.composite
def statements(draw: st.DrawFn) -> Statement:
    """The skeleton of a SELECT, INSERT, UPDATE or DELETE."""
    kind = draw(statement_types)
    table = draw(table_refs)
    if kind is Select:
        return Select(
            draw(column_lists),
            table,
            draw(maybe_identifiers),
            draw(join_lists),
            draw(where_clauses),
            draw(st.booleans()),
        )
    if kind is Insert:
        return Insert(table, draw(name_lists))
    if kind is Update:
        return Update(table, draw(name_lists), draw(where_clauses))
    return Delete(table, draw(where_clauses))


STATEMENTS = statements()


# --------------------------------------------------------------------------------------------
# Values: everything a value slot may hold.


@cache  # one strategy per word: building strategies is what makes a test slow
def _mixed_case(word: str) -> st.SearchStrategy[str]:
    flags = st.lists(st.booleans(), min_size=len(word), max_size=len(word))
    return flags.map(
        lambda upper: "".join(
            c.upper() if u else c.lower() for c, u in zip(word, upper, strict=True)
        )
    )


def _signed(number: str, sign: str) -> str:
    """A number with an optional sign, written as ``-1``, ``- 1`` or ``+1``."""
    if sign == "none":
        return number
    return {"minus": "-", "spaced minus": "- ", "plus": "+"}[sign] + number


signs = st.sampled_from(["none", "minus", "spaced minus", "plus"])
unsigned_numbers = st.one_of(
    st.integers(0, 2**64).map(str),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(min_value=0, allow_nan=False, allow_infinity=False).map(str),
    st.integers(0, 2**32).map(hex),
    st.integers(0, 999).map(lambda n: f".{n}"),
)
numbers = st.builds(_signed, unsigned_numbers, signs) | st.integers(-(2**63), 2**63).map(str)
booleans = st.sampled_from(["true", "false"]).flatmap(_mixed_case)
param_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
placeholders = st.one_of(
    st.just("?"),  # qmark
    st.just("%s"),  # format
    param_names.map(lambda name: f"%({name})s"),  # pyformat
    param_names.map(lambda name: f":{name}"),  # named
    st.integers(1, 99).map(lambda n: f":{n}"),  # numeric
    st.integers(1, 99).map(lambda n: f"${n}"),  # PostgreSQL / asyncpg
)


def _standard_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _escape_string(text: str) -> str:
    """A PostgreSQL ``E'...'`` string: backslash escapes, quotes as ``\\'``."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dollar_string(tag: str, text: str) -> str | None:
    quote = f"${tag}$"
    if (text + quote).find(quote) != len(text) or (not tag and text.endswith("$")):
        return None  # the body would end the string early: not a literal of this text
    return quote + text + quote


# Any character a driver can send (no lone surrogates), with those that matter to a tokeniser
# often.
characters = st.characters(codec="utf-8") | st.sampled_from(list("'\"`\\$?%:;-/*()\n"))
texts = st.text(characters)
# A dollar-quoted body: often with dollar signs and other tags in it.
dollar_texts = st.lists(texts | st.sampled_from(["$$", "$", "$q", "$body$", "'", "--"])).map(
    "".join
)
standard_strings = st.one_of(
    texts.map(_standard_string),
    texts.map(lambda text: "N" + _standard_string(text)),
    texts.map(_escape_string),
    st.builds(_dollar_string, st.sampled_from(["", "q", "body", "_x1"]), dollar_texts)
    .filter(lambda s: s is not None)
    .map(str),
)


def _mysql_escaped(pieces: list[tuple[str, int]]) -> str:
    """A MySQL string: backslash escapes; quotes as ``\\'`` or ``''``; any char may be escaped."""
    out = []
    for char, choice in pieces:
        if char == "'":
            out.append("''" if choice == 0 else "\\'")
        elif char == "\\":
            out.append("\\\\")
        else:
            out.append("\\" + char if choice == 2 else char)
    return "'" + "".join(out) + "'"


mysql_strings = st.lists(st.tuples(characters, st.integers(0, 2))).map(_mysql_escaped)


VALUES = {
    mysql: st.one_of(numbers, mysql_strings if mysql else standard_strings, booleans, placeholders)
    for mysql in (False, True)
}


# --------------------------------------------------------------------------------------------
# Whitespace and comments between tokens.

block_comments = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="*/"), max_size=10
).map(lambda text: f" /*{text}*/ ")
line_comments = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=10
).map(lambda text: f" -- {text}\n")
comments = block_comments | line_comments
TIGHT = frozenset({"(", ")", ","})  # no whitespace needed next to these
lengths = st.integers(1, 5)


class Renderer:
    """Collects the tokens of one rendering; every value-level choice is drawn from ``data``.

    Without ``data`` it renders the canonical form: ``?`` for values, one-item lists, upper-case
    keywords and single spaces. ``swap`` replaces the identifier at that position (in rendering
    order) by another one: a structural change.

    Values, list lengths and comments are drawn from hypothesis; keyword case and whitespace,
    of which there are many, come from one seeded ``random.Random`` to keep the tests fast.
    """

    def __init__(
        self,
        data: st.DataObject | None,
        *,
        mysql: bool = False,
        swap: tuple[int, Ident] | None = None,
    ) -> None:
        self.data = data
        self.rng = None if data is None else data.draw(st.randoms(use_true_random=True))
        self.mysql = mysql
        self.swap = swap
        self.tokens: list[str] = []
        self.idents: list[Ident] = []

    def draw(self, strategy: st.SearchStrategy[T], canonical: T) -> T:
        return canonical if self.data is None else self.data.draw(strategy)

    def case(self, word: str) -> str:
        """``word`` in upper, lower or mixed case."""
        rng = self.rng
        if rng is None:
            return word.upper()
        style = rng.choice(["upper", "lower", "mixed"])
        if style == "mixed":
            return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)
        return word.upper() if style == "upper" else word.lower()

    def separator(self, tight: bool) -> str:
        """Whitespace, maybe a comment; maybe nothing next to ``(``, ``)`` and ``,``."""
        if self.rng is None or self.data is None:
            return " "
        roll = self.rng.random()
        if tight and roll < 0.3:
            return ""
        if roll > 0.9:
            return self.data.draw(comments)
        return "".join(self.rng.choice(" \t\n\r") for _ in range(self.rng.randint(1, 3)))

    def kw(self, words: str) -> None:
        for word in words.split():
            self.tokens.append(self.case(word))

    def tok(self, *tokens: str) -> None:
        self.tokens += tokens

    def ident(self, ident: Ident) -> str:
        if self.swap is not None and self.swap[0] == len(self.idents):
            ident = self.swap[1]
        self.idents.append(ident)
        if ident.quoted:
            quote = "`" if self.mysql else '"'
            return quote + ident.name.replace(quote, quote * 2) + quote
        return ident.name if self.rng is None else self.case(ident.name)

    def name(self, *parts: Ident | None) -> None:
        """A dotted name such as ``schema.table`` or ``alias.column``, as one token."""
        self.tok(".".join(self.ident(part) for part in parts if part is not None))

    def value(self) -> None:
        self.tok(self.draw(VALUES[self.mysql], "?"))

    def values(self, count: int) -> None:
        """``(v, v, ...)``."""
        self.tok("(")
        for i in range(count):
            if i:
                self.tok(",")
            self.value()
        self.tok(")")

    def length(self) -> int:
        """How many items an IN-list or VALUES has: a value, not part of the shape."""
        return self.draw(lengths, 1)

    def sql(self) -> str:
        parts = [self.separator(False).strip(" "), self.tokens[0]]
        for before, after in zip(self.tokens, self.tokens[1:], strict=False):
            parts += [self.separator(before in TIGHT or after in TIGHT), after]
        return "".join(parts)


def _column(r: Renderer, column: Column) -> None:
    r.name(column.qualifier, column.name)


def _condition(r: Renderer, condition: Condition) -> None:
    op = condition.op
    if len(condition.columns) > 1:  # (a, b) IN ((v, v), (v, v))
        r.tok("(")
        for i, column in enumerate(condition.columns):
            if i:
                r.tok(",")
            _column(r, column)
        r.tok(")")
        r.kw(op)
        r.tok("(")
        for row in range(r.length()):
            if row:
                r.tok(",")
            r.values(len(condition.columns))
        r.tok(")")
        return
    _column(r, condition.columns[0])
    if op in COMPARISONS:
        r.tok(op)
        r.value()
    elif op.endswith("IN"):
        r.kw(op)
        r.values(r.length())
    elif op.endswith("BETWEEN"):
        r.kw(op)
        r.value()
        r.kw("AND")
        r.value()
    elif op.endswith("LIKE"):
        r.kw(op)
        r.value()
    else:
        r.kw(op)


def _where(r: Renderer, where: tuple[Condition, ...]) -> None:
    for i, condition in enumerate(where):
        r.kw(condition.connector if i else "WHERE")
        _condition(r, condition)


def render(statement: Statement, r: Renderer) -> str:
    """``statement`` as SQL text, with every value-level choice taken by ``r``."""
    if isinstance(statement, Select):
        r.kw("SELECT")
        for i, column in enumerate(statement.columns):
            if i:
                r.tok(",")
            _column(r, column)
        r.kw("FROM")
        r.name(statement.table.schema, statement.table.name)
        if statement.alias is not None:
            r.name(statement.alias)
        for join in statement.joins:
            r.kw(join.how)
            r.name(join.table.schema, join.table.name)
            if join.alias is not None:
                r.name(join.alias)
            r.kw("ON")
            _column(r, join.left)
            r.tok("=")
            _column(r, join.right)
        _where(r, statement.where)
        if statement.limit:
            r.kw("LIMIT")
            r.value()
    elif isinstance(statement, Insert):
        r.kw("INSERT INTO")
        r.name(statement.table.schema, statement.table.name)
        r.tok("(")
        for i, name in enumerate(statement.columns):
            if i:
                r.tok(",")
            r.name(name)
        r.tok(")")
        r.kw("VALUES")
        for row in range(r.length()):
            if row:
                r.tok(",")
            r.values(len(statement.columns))
    elif isinstance(statement, Update):
        r.kw("UPDATE")
        r.name(statement.table.schema, statement.table.name)
        r.kw("SET")
        for i, name in enumerate(statement.columns):
            if i:
                r.tok(",")
            r.name(name)
            r.tok("=")
            r.value()
        _where(r, statement.where)
    else:
        r.kw("DELETE FROM")
        r.name(statement.table.schema, statement.table.name)
        _where(r, statement.where)
    return r.sql()


# --------------------------------------------------------------------------------------------
# Structural changes: each gives a skeleton of a different shape.


def _insert_at(items: tuple[T, ...], index: int, item: T) -> tuple[T, ...]:
    return (*items[:index], item, *items[index:])


def _drop_at(items: tuple[T, ...], index: int) -> tuple[T, ...]:
    return (*items[:index], *items[index + 1 :])


@st.composite
def structural_changes(
    draw: st.DrawFn, statement: Statement
) -> tuple[Statement, tuple[int, Ident] | None]:
    """A changed skeleton and, for an identifier change, which identifier becomes what."""
    canonical = Renderer(None)
    render(statement, canonical)
    changes: dict[str, Callable[[], Statement | tuple[int, Ident]]] = {}

    def swap_identifier() -> tuple[int, Ident]:
        index = draw(st.integers(0, len(canonical.idents) - 1))
        old = canonical.idents[index]
        return index, draw(identifiers.filter(lambda new: new != old))

    changes["replace an identifier"] = swap_identifier
    if not isinstance(statement, Insert):
        filtered = statement
        where = statement.where

        def add_condition() -> Statement:
            index = draw(st.integers(0, len(where)))
            return replace(filtered, where=_insert_at(where, index, draw(conditions)))

        def drop_condition() -> Statement:
            index = draw(st.integers(0, len(where) - 1))
            return replace(filtered, where=_drop_at(where, index))

        def change_operator() -> Statement:
            index = draw(st.integers(0, len(where) - 1))
            condition = where[index]
            choices = ("IN", "NOT IN") if len(condition.columns) > 1 else OPERATORS
            op = draw(st.sampled_from([op for op in choices if op != condition.op]))
            changed = (*where[:index], replace(condition, op=op), *where[index + 1 :])
            return replace(filtered, where=changed)

        def change_connector() -> Statement:
            index = draw(st.integers(1, len(where) - 1))
            condition = where[index]
            connector = "OR" if condition.connector == "AND" else "AND"
            changed = (*where[:index], replace(condition, connector=connector), *where[index + 1 :])
            return replace(filtered, where=changed)

        changes["add a condition"] = add_condition
        if where:
            changes["drop a condition"] = drop_condition
            changes["change an operator"] = change_operator
        if len(where) > 1:
            changes["change a connector"] = change_connector
    if isinstance(statement, Select):
        select = statement

        def add_column() -> Statement:
            index = draw(st.integers(0, len(select.columns)))
            return replace(select, columns=_insert_at(select.columns, index, draw(columns)))

        def drop_column() -> Statement:
            assert len(select.columns) > 1
            index = draw(st.integers(0, len(select.columns) - 1))
            return replace(select, columns=_drop_at(select.columns, index))

        def toggle_join() -> Statement:
            drop = draw(st.booleans())
            if select.joins and drop:
                return replace(select, joins=select.joins[:-1])
            return replace(select, joins=(*select.joins, draw(joins)))

        changes["add a column"] = add_column
        if len(select.columns) > 1:
            changes["drop a column"] = drop_column
        changes["add or drop a join"] = toggle_join
        changes["add or drop LIMIT"] = lambda: replace(select, limit=not select.limit)
    if isinstance(statement, Insert | Update):
        named = statement

        def add_name() -> Statement:
            index = draw(st.integers(0, len(named.columns)))
            return replace(named, columns=_insert_at(named.columns, index, draw(identifiers)))

        def drop_name() -> Statement:
            index = draw(st.integers(0, len(named.columns) - 1))
            return replace(named, columns=_drop_at(named.columns, index))

        changes["add a column"] = add_name
        if len(named.columns) > 1:
            changes["drop a column"] = drop_name
    change = draw(st.sampled_from(sorted(changes)))
    result = changes[change]()
    if isinstance(result, tuple):
        return statement, result
    return result, None


# --------------------------------------------------------------------------------------------
# Properties


def _check_value_invariance(statement: Statement, data: st.DataObject, mysql: bool) -> None:
    canonical = render(statement, Renderer(None, mysql=mysql))
    expected = analyze(canonical, mysql)
    for _ in range(2):
        sql = render(statement, Renderer(data, mysql=mysql))
        info = analyze(sql, mysql)
        assert info.fingerprint == expected.fingerprint, (sql, canonical)
        assert info.fingerprint_id == expected.fingerprint_id
        assert info.kind is expected_kind(statement)
        assert info.tables == expected_tables(statement), sql
    # a fingerprint is a fixed point: it has nothing left to normalise
    assert fingerprint(expected.fingerprint, backslash_escapes=mysql) == expected.fingerprint


def _check_structural_change(data: st.DataObject, mysql: bool) -> None:
    statement = data.draw(STATEMENTS, label="statement")
    changed, swap = data.draw(structural_changes(statement), label="changed")
    before = render(statement, Renderer(data, mysql=mysql))
    after = render(changed, Renderer(data, mysql=mysql, swap=swap))
    info_before, info_after = analyze(before, mysql), analyze(after, mysql)
    assert info_before.fingerprint != info_after.fingerprint, (before, after)
    assert info_before.fingerprint_id != info_after.fingerprint_id


@PROPERTY_SETTINGS
@given(STATEMENTS, st.data())
def test_value_changes_never_change_the_fingerprint(
    statement: Statement, data: st.DataObject
) -> None:
    _check_value_invariance(statement, data, mysql=False)


@PROPERTY_SETTINGS
@given(STATEMENTS, st.data())
def test_value_changes_never_change_the_fingerprint_mysql(
    statement: Statement, data: st.DataObject
) -> None:
    _check_value_invariance(statement, data, mysql=True)


@PROPERTY_SETTINGS
@given(st.data())
def test_structural_changes_always_change_the_fingerprint(data: st.DataObject) -> None:
    _check_structural_change(data, mysql=False)


@PROPERTY_SETTINGS
@given(st.data())
def test_structural_changes_always_change_the_fingerprint_mysql(data: st.DataObject) -> None:
    _check_structural_change(data, mysql=True)


@settings(max_examples=300, deadline=None)
@given(texts, st.booleans())
def test_any_text_is_analysed_without_error(sql: str, mysql: bool) -> None:
    info = analyze(sql, mysql)
    assert isinstance(info.kind, StatementKind)
    assert re.fullmatch(r"[0-9a-f]{12}", info.fingerprint_id)
    assert list(info.tables) == sorted(set(info.tables))


@settings(max_examples=200, deadline=None)
@given(st.data(), st.booleans())
def test_any_string_literal_is_one_value(data: st.DataObject, mysql: bool) -> None:
    strings = mysql_strings if mysql else standard_strings
    a, b, c = (data.draw(strings) for _ in range(3))
    sql = f"SELECT * FROM t WHERE a = {a} AND b IN ({b}, {c}) -- {a!r}"
    assert (
        fingerprint(sql, backslash_escapes=mysql) == "select * from t where a = ? and b in (?...)"
    )


SQL_FRAGMENTS = st.sampled_from(
    "( ) , ; ? 1 -1 'x' \"q\" `b` $$d$$ $1 :n %s -- /* */ \\ ' \" $ . :: - select from where in "
    "values with as on join update into table drop truncate lateral extract distinct using "
    "references for key do t u \n".split(" ")
)


@settings(max_examples=300, deadline=None)
@given(st.lists(SQL_FRAGMENTS, max_size=25), st.booleans())
def test_sql_like_fragments_are_analysed_without_error(parts: list[str], mysql: bool) -> None:
    analyze(" ".join(parts), mysql)
    analyze("".join(parts), mysql)


# --------------------------------------------------------------------------------------------
# Fingerprints: examples


def same(*statements: str, mysql: bool = False) -> bool:
    return len({fingerprint(sql, backslash_escapes=mysql) for sql in statements}) == 1


def test_literals_become_placeholders() -> None:
    assert fingerprint("SELECT * FROM t WHERE a = 1 AND b = 'x' AND c = 1.5e3") == (
        "select * from t where a = ? and b = ? and c = ?"
    )
    assert same(
        "SELECT * FROM t WHERE a = 1",
        "SELECT * FROM t WHERE a = 'it''s'",
        "SELECT * FROM t WHERE a = N'x'",
        "SELECT * FROM t WHERE a = 0x1F",
        "SELECT * FROM t WHERE a = .5",
        "SELECT * FROM t WHERE a = TRUE",
        "SELECT * FROM t WHERE a = false",
    )


@pytest.mark.parametrize(
    "placeholder", ["?", "%s", "%(user_id)s", ":user_id", ":1", "$1", "42", "'42'"]
)
def test_every_dbapi_placeholder_style_gives_one_fingerprint(placeholder: str) -> None:
    sql = f"SELECT * FROM users WHERE id = {placeholder} AND name = {placeholder}"
    assert fingerprint(sql) == "select * from users where id = ? and name = ?"


def test_placeholders_inside_lists_and_casts() -> None:
    assert same(
        "SELECT * FROM t WHERE a = :a::int",
        "SELECT * FROM t WHERE a = %(a)s::int",
        "SELECT * FROM t WHERE a = $1::int",
        "SELECT * FROM t WHERE a = '5'::int",
    )


def test_in_lists_of_any_length_share_one_fingerprint() -> None:
    assert same(
        "SELECT * FROM t WHERE a IN (?)",
        "SELECT * FROM t WHERE a IN (?, ?, ?, ?)",
        "SELECT * FROM t WHERE a IN (1, 'x', -3, TRUE, %s, :p, $7)",
        "select * from t where a in(1,2)",
    )
    assert fingerprint("SELECT * FROM t WHERE a IN (?, ?)") == "select * from t where a in (?...)"
    assert same("SELECT * FROM t WHERE a NOT IN (1)", "SELECT * FROM t WHERE a NOT IN (1, 2, 3)")
    # an IN-list is not the same shape as a comparison, and NOT IN is not IN
    assert not same("SELECT * FROM t WHERE a IN (?)", "SELECT * FROM t WHERE a = ?")
    assert not same("SELECT * FROM t WHERE a IN (?)", "SELECT * FROM t WHERE a NOT IN (?)")


def test_in_lists_keep_the_shape_of_their_items() -> None:
    assert same(
        "SELECT * FROM t WHERE a IN (?::int)", "SELECT * FROM t WHERE a IN (1::int, 2::int)"
    )
    assert not same("SELECT * FROM t WHERE a IN (?::int)", "SELECT * FROM t WHERE a IN (?)")
    # a list that mixes values and columns is not a value list
    assert not same("SELECT * FROM t WHERE a IN (?, b)", "SELECT * FROM t WHERE a IN (?)")
    # subqueries are shape: different subqueries, different fingerprints
    assert not same(
        "SELECT * FROM t WHERE a IN (SELECT id FROM u)",
        "SELECT * FROM t WHERE a IN (SELECT id FROM v)",
    )
    assert fingerprint("SELECT * FROM t WHERE a IN (SELECT id FROM u WHERE x IN (1, 2))") == (
        "select * from t where a in (select id from u where x in (?...))"
    )


def test_tuple_in_collapses_but_keeps_its_arity() -> None:
    two = fingerprint("SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))")
    assert two == "select * from t where (a, b) in ((?, ?)...)"
    assert same(
        "SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
        "SELECT * FROM t WHERE (a, b) IN ((?, ?))",
        "SELECT * FROM t WHERE (a, b) IN ((?, ?), (?, ?), ('x', -1), (%s, :p))",
    )
    three = fingerprint("SELECT * FROM t WHERE (a, b, c) IN ((1, 2, 3), (4, 5, 6))")
    assert three == "select * from t where (a, b, c) in ((?, ?, ?)...)"
    # rows of different arity are not collapsed into either arity
    ragged = fingerprint("SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4, 5))")
    assert ragged not in (two, three)


def test_multi_row_values_share_one_fingerprint() -> None:
    assert same(
        "INSERT INTO t (a, b) VALUES (1, 2)",
        "INSERT INTO t (a, b) VALUES (1, 2), (3, 4), (5, 6)",
        "INSERT INTO t (a, b) VALUES (?, ?), (%s, 'x'), (-1, TRUE)",
    )
    assert not same("INSERT INTO t (a, b) VALUES (1, 2)", "INSERT INTO t (a) VALUES (1)")
    # SQLAlchemy's insertmanyvalues batches with a sentinel counter
    assert same(
        "INSERT INTO t (a) SELECT p0::INTEGER FROM (VALUES (%(a__0)s, 0)) "
        "AS imp_sen(p0, sen_counter) ORDER BY sen_counter RETURNING t.id",
        "INSERT INTO t (a) SELECT p0::INTEGER FROM (VALUES (%(a__0)s, 0), (%(a__1)s, 1), "
        "(%(a__2)s, 2)) AS imp_sen(p0, sen_counter) ORDER BY sen_counter RETURNING t.id",
    )


def test_whitespace_and_keyword_case_are_normalised() -> None:
    assert same(
        "SELECT a, b FROM t WHERE a = 1",
        "select   a,b\n\tfrom T\r\nwhere A=1",
        "  SeLeCt a ,  b FROM t WHERE a =\n1  ",
    )
    assert fingerprint("SELECT a,b FROM t WHERE a=1") == "select a, b from t where a = ?"


def test_quoted_identifiers_keep_their_case() -> None:
    assert same("SELECT * FROM user", "SELECT * FROM USER", "select * from User")
    assert not same('SELECT * FROM "User"', 'SELECT * FROM "user"')
    assert not same("SELECT * FROM `User`", "SELECT * FROM `user`")
    assert fingerprint('SELECT "Name" FROM "User"') == 'select "Name" from "User"'


def test_comments_are_dropped() -> None:
    assert same(
        "SELECT a FROM t WHERE a = 1",
        "SELECT a /* the a column */ FROM t -- a comment\nWHERE a = 1",
        "/* leading */ SELECT a FROM t WHERE a = 1 -- trailing",
        "SELECT a FROM t WHERE a = 1 /* sqlcommenter: route='/x' */",
    )
    # comment markers inside a string are part of the string
    assert same("SELECT '-- not a comment' FROM t", "SELECT '/* nor this */' FROM t")


def test_trailing_semicolon_is_ignored() -> None:
    assert same(
        "SELECT 1",
        "SELECT 1;",
        "SELECT 1 ;  \n",
        "SELECT 1; -- done",
        "SELECT 1 /* x */ ;",
        "SELECT 1;;",
    )
    # a semicolon between statements is shape
    assert not same("SELECT 1; SELECT 2", "SELECT 1 SELECT 2")


def test_postgresql_casts_and_dollar_quoted_strings() -> None:
    assert fingerprint("SELECT a::text FROM t WHERE b = '2020-01-01'::date") == (
        "select a::text from t where b = ?::date"
    )
    assert not same("SELECT ?::date", "SELECT ?::timestamp")
    assert same(
        "SELECT * FROM t WHERE b = $$it's$$",
        "SELECT * FROM t WHERE b = $fn$ a 'quoted' $$ body $fn$",
        "SELECT * FROM t WHERE b = $$$$",
        "SELECT * FROM t WHERE b = 'plain'",
    )
    assert fingerprint("SELECT * FROM t WHERE a = $1 AND b = $2") == (
        "select * from t where a = ? and b = ?"
    )


def test_postgresql_escape_strings() -> None:
    assert same(
        "SELECT * FROM t WHERE a = E'it\\'s' AND b = 1",
        "SELECT * FROM t WHERE a = e'\\\\' AND b = 1",
        "SELECT * FROM t WHERE a = 'x' AND b = 1",
    )


def test_subtraction_is_shape_but_a_sign_is_part_of_a_literal() -> None:
    assert same(
        "SELECT * FROM t WHERE x = -1",
        "SELECT * FROM t WHERE x = - 1",
        "SELECT * FROM t WHERE x = +1",
        "SELECT * FROM t WHERE x = 1",
    )
    assert fingerprint("SELECT x - 1 FROM t") == "select x - ? from t"
    assert same("SELECT x - 1 FROM t", "SELECT x-1 FROM t", "SELECT x -1 FROM t")
    assert not same("SELECT x - 1 FROM t", "SELECT x FROM t")
    assert not same("SELECT * FROM t WHERE x - 1 = 0", "SELECT * FROM t WHERE x = 0")
    assert same("SELECT (x) - 1 FROM t", "SELECT (x) - 2 FROM t")
    assert fingerprint("SELECT (x) - 1 FROM t") == "select (x) - ? from t"
    assert fingerprint("SELECT ? - 1") == "select ? - ?"
    assert fingerprint("SELECT * FROM t WHERE a BETWEEN -1 AND -2 LIMIT -1") == (
        "select * from t where a between ? and ? limit ?"
    )


def test_backslash_escapes_mysql() -> None:
    mysql = [
        "SELECT * FROM t WHERE a = 'it\\'s' AND b = 1",
        "SELECT * FROM t WHERE a = '\\\\' AND b = 1",
        "SELECT * FROM t WHERE a = 'it''s -- no comment' AND b = 1",
        "SELECT * FROM t WHERE a = 'x\\' /* still a string */' AND b = 1",
        "SELECT * FROM t WHERE a = %s AND b = %s",
    ]
    assert same(*mysql, mysql=True)
    assert fingerprint(mysql[0], backslash_escapes=True) == "select * from t where a = ? and b = ?"
    # in standard SQL a backslash is an ordinary character: 'C:\' is a whole string
    assert same(
        "SELECT * FROM t WHERE a = 'C:\\' AND b = 1",
        "SELECT * FROM t WHERE a = ? AND b = ?",
    )
    assert fingerprint("SELECT * FROM t WHERE a = 'C:\\' AND b = 1", backslash_escapes=True) != (
        fingerprint("SELECT * FROM t WHERE a = 'C:\\' AND b = 1")
    )


def test_different_shapes_never_share_a_fingerprint() -> None:
    shapes = [
        "SELECT a FROM t WHERE b = ?",
        "SELECT a FROM t WHERE c = ?",
        "SELECT a FROM u WHERE b = ?",
        "SELECT c FROM t WHERE b = ?",
        "SELECT a, c FROM t WHERE b = ?",
        "SELECT a FROM t WHERE b < ?",
        "SELECT a FROM t WHERE b <> ?",
        "SELECT a FROM t WHERE b LIKE ?",
        "SELECT a FROM t WHERE b IS NULL",
        "SELECT a FROM t WHERE b = ? AND c = ?",
        "SELECT a FROM t WHERE b = ? OR c = ?",
        "SELECT a FROM t",
        'SELECT a FROM "t" WHERE b = ?',
        "SELECT a FROM s.t WHERE b = ?",
        "SELECT a FROM t WHERE b = ? LIMIT ?",
        "SELECT a FROM t WHERE b = ? ORDER BY a",
        "DELETE FROM t WHERE b = ?",
        "UPDATE t SET a = ? WHERE b = ?",
    ]
    fingerprints = [fingerprint(sql) for sql in shapes]
    assert len(set(fingerprints)) == len(shapes)
    ids = {analyze(sql).fingerprint_id for sql in shapes}
    assert len(ids) == len(shapes)


def test_fingerprint_id_follows_the_fingerprint() -> None:
    a = analyze("SELECT * FROM t WHERE a = 1")
    b = analyze("select * from t where a = 'other'")
    c = analyze("SELECT * FROM t WHERE b = 1")
    assert a.fingerprint_id == b.fingerprint_id != c.fingerprint_id
    assert re.fullmatch(r"[0-9a-f]{12}", a.fingerprint_id)


def test_empty_and_comment_only_statements() -> None:
    assert fingerprint("") == fingerprint("   \n") == fingerprint("-- nothing") == ""
    assert analyze("").kind is StatementKind.OTHER
    assert analyze("").tables == ()


# --------------------------------------------------------------------------------------------
# Memoisation


def test_analyze_is_memoised_per_statement_string() -> None:
    table = "memo_" + "table"  # built at run time: equal strings, not the same object
    first = f"SELECT * FROM {table} WHERE id = 1"
    second = "".join(["SELECT * FROM ", table, " WHERE id = 1"])
    assert first == second
    assert first is not second
    assert analyze(first) is analyze(second)
    assert analyze(first, True) is analyze(second, True)
    assert fingerprint(first) is fingerprint(second)
    # a different string is analysed on its own, even when its shape is the same
    other = analyze(f"SELECT * FROM {table} WHERE id = 2")
    assert other is not analyze(first)
    assert other == analyze(first)


def test_fingerprint_uses_the_analyze_cache() -> None:
    sql = "SELECT * FROM memo_hits WHERE id = " + str(12345)
    fingerprint(sql)
    hits = _sqltext._analyze.cache_info().hits
    fingerprint(sql)
    assert _sqltext._analyze.cache_info().hits == hits + 1


def test_the_default_quoting_rule_shares_one_memo_entry() -> None:
    sql = "SELECT * FROM memo_default WHERE id = " + str(54321)
    assert analyze(sql) is analyze(sql, False) is analyze(sql, backslash_escapes=False)


# --------------------------------------------------------------------------------------------
# Statement kind


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", StatementKind.SELECT),
        ("select * from t", StatementKind.SELECT),
        ("  -- comment\n SELECT 1", StatementKind.SELECT),
        ("VALUES (1), (2)", StatementKind.SELECT),
        ("TABLE t", StatementKind.SELECT),
        ("(SELECT 1) UNION (SELECT 2)", StatementKind.SELECT),
        ("((SELECT a FROM t) EXCEPT (SELECT a FROM u))", StatementKind.SELECT),
        ("WITH c AS (SELECT 1) SELECT * FROM c", StatementKind.SELECT),
        ("WITH c AS (DELETE FROM t RETURNING *) SELECT * FROM c", StatementKind.SELECT),
        ("INSERT INTO t (a) VALUES (1)", StatementKind.INSERT),
        ("REPLACE INTO t (a) VALUES (1)", StatementKind.INSERT),
        ("WITH c AS (SELECT 1 AS a) INSERT INTO t (a) SELECT a FROM c", StatementKind.INSERT),
        ("UPDATE t SET a = 1", StatementKind.UPDATE),
        ("WITH c AS (SELECT 1) UPDATE t SET a = 1", StatementKind.UPDATE),
        ("WITH RECURSIVE c(n) AS (SELECT 1) UPDATE t SET a = 1", StatementKind.UPDATE),
        ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", StatementKind.UPDATE),
        ("DELETE FROM t WHERE a = 1", StatementKind.DELETE),
        ("WITH c AS (SELECT 1) DELETE FROM t", StatementKind.DELETE),
        ("CREATE TABLE t (id INT)", StatementKind.DDL),
        ("ALTER TABLE t ADD COLUMN a INT", StatementKind.DDL),
        ("DROP TABLE t", StatementKind.DDL),
        ("TRUNCATE t", StatementKind.DDL),
        ("TRUNCATE TABLE t RESTART IDENTITY", StatementKind.DDL),
        ("CREATE INDEX ix ON t (a)", StatementKind.DDL),
        ("COMMENT ON TABLE t IS 'x'", StatementKind.DDL),
        ("SAVEPOINT sa_savepoint_1", StatementKind.OTHER),
        ("RELEASE SAVEPOINT sa_savepoint_1", StatementKind.OTHER),
        ("ROLLBACK TO SAVEPOINT sa_savepoint_1", StatementKind.OTHER),
        ("BEGIN", StatementKind.OTHER),
        ("COMMIT", StatementKind.OTHER),
        ("SET search_path TO public", StatementKind.OTHER),
        ("SHOW server_version", StatementKind.OTHER),
        ("", StatementKind.OTHER),
        ("?", StatementKind.OTHER),
    ],
)
def test_statement_kind(sql: str, kind: StatementKind) -> None:
    assert analyze(sql).kind is kind


# --------------------------------------------------------------------------------------------
# Tables


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT 1", ()),
        ("SELECT * FROM t", ("t",)),
        ("SELECT * FROM T AS x WHERE x.a = 1", ("t",)),
        ("SELECT * FROM b, a", ("a", "b")),
        ("SELECT * FROM a x, b AS y, c WHERE x.id = y.id", ("a", "b", "c")),
        (
            "SELECT * FROM a JOIN b ON a.id = b.a_id LEFT OUTER JOIN c ON c.id = b.c_id",
            ("a", "b", "c"),
        ),
        (
            "SELECT * FROM a INNER JOIN b USING (id) CROSS JOIN c NATURAL JOIN d",
            ("a", "b", "c", "d"),
        ),
        ("SELECT * FROM a JOIN a AS a2 ON a.parent_id = a2.id", ("a",)),
        (
            "SELECT * FROM public.users u JOIN audit.log l ON l.user_id = u.id",
            ("audit.log", "public.users"),
        ),
        ('SELECT * FROM "MySchema"."User" JOIN "we""ird" ON 1 = 1', ("MySchema.User", 'we"ird')),
        ("SELECT * FROM `shop`.`order`", ("shop.order",)),
        ('SELECT "order".id FROM "order"', ("order",)),
        ('SELECT * FROM "select" JOIN "from" ON "select".id = "from".id', ("from", "select")),
        ("SELECT * FROM (SELECT * FROM inner_t) AS sub", ("inner_t",)),
        ("SELECT * FROM a WHERE a.id IN (SELECT a_id FROM b)", ("a", "b")),
        ("SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.a_id = a.id)", ("a", "b")),
        ("SELECT (SELECT max(x) FROM b) FROM a", ("a", "b")),
        ("SELECT * FROM a JOIN LATERAL (SELECT * FROM b) s ON true", ("a", "b")),
        ("SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.a = a.id) s", ("a", "b")),
        ("SELECT * FROM a, LATERAL jsonb_array_elements(a.j) e", ("a",)),
        ("SELECT * FROM generate_series(1, 3) g", ()),
        ("SELECT * FROM ONLY parent_t", ("parent_t",)),
        ("SELECT a FROM t UNION SELECT a FROM u", ("t", "u")),
        ("(SELECT * FROM a) UNION (SELECT * FROM b)", ("a", "b")),
        ("WITH c AS (SELECT * FROM b) SELECT * FROM c", ("b",)),
        (
            "WITH c AS (SELECT * FROM b), d AS (SELECT * FROM c) SELECT * FROM d JOIN e ON 1 = 1",
            ("b", "e"),
        ),
        ("WITH c (x, y) AS (SELECT 1, 2) SELECT * FROM c", ()),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r", ()),
        ("WITH c AS MATERIALIZED (SELECT * FROM b) SELECT * FROM c", ("b",)),
        ("WITH c AS NOT MATERIALIZED (SELECT * FROM b) SELECT * FROM c", ("b",)),
        ("WITH c AS (SELECT id FROM b) UPDATE t SET x = 1 FROM c WHERE t.id = c.id", ("b", "t")),
        ("INSERT INTO t (a, b) VALUES (1, 2)", ("t",)),
        ("INSERT INTO s.t VALUES (1)", ("s.t",)),
        ("INSERT INTO a (x) SELECT x FROM b JOIN c ON b.id = c.id", ("a", "b", "c")),
        ("INSERT INTO a SELECT * FROM b", ("a", "b")),
        ("UPDATE a SET x = b.x FROM b WHERE a.id = b.id", ("a", "b")),
        ("UPDATE a SET x = (SELECT max(y) FROM c)", ("a", "c")),
        ("UPDATE a JOIN b ON a.id = b.id SET a.x = b.x", ("a", "b")),
        ("DELETE FROM a USING b WHERE a.x = b.x", ("a", "b")),
        ("DELETE FROM a USING b, c WHERE a.x = b.x AND b.y = c.y", ("a", "b", "c")),
        ("DELETE a FROM a JOIN b ON a.id = b.id", ("a", "b")),
        (
            "CREATE TABLE a (id INT PRIMARY KEY, b_id INT REFERENCES b (id) ON DELETE CASCADE)",
            ("a", "b"),
        ),
        (
            "CREATE TABLE IF NOT EXISTS a (b_id INT REFERENCES s.b(id) ON UPDATE CASCADE)",
            ("a", "s.b"),
        ),
        (
            "CREATE TABLE a (x INT, FOREIGN KEY (x) REFERENCES b (id) ON DELETE SET NULL)",
            ("a", "b"),
        ),
        ("ALTER TABLE a ADD CONSTRAINT fk FOREIGN KEY (x) REFERENCES b (id)", ("a", "b")),
        ("CREATE INDEX ix_a_x ON a (x)", ("a",)),
        ("CREATE UNIQUE INDEX ix ON s.a USING btree (x)", ("s.a",)),
        ("DROP TABLE a", ("a",)),
        ("DROP TABLE IF EXISTS a, b CASCADE", ("a", "b")),
        ("TRUNCATE a, b", ("a", "b")),
        ("TRUNCATE TABLE a, b RESTART IDENTITY", ("a", "b")),
        ("SELECT EXTRACT(YEAR FROM created) FROM t", ("t",)),
        ("SELECT SUBSTRING(name FROM 2 FOR 3), TRIM(BOTH 'x' FROM name) FROM t", ("t",)),
        ("SELECT EXTRACT(YEAR FROM (SELECT d FROM u)) FROM t", ("t", "u")),
        ("SELECT * FROM a WHERE x IS DISTINCT FROM y", ("a",)),
        ("SELECT * FROM a WHERE x IS NOT DISTINCT FROM y", ("a",)),
        ("SELECT * FROM a WHERE id = 1 FOR UPDATE", ("a",)),
        ("SELECT * FROM a FOR UPDATE OF a SKIP LOCKED", ("a",)),
        ("SELECT * FROM a FOR NO KEY UPDATE", ("a",)),
        ("INSERT INTO a (x) VALUES (1) ON DUPLICATE KEY UPDATE x = VALUES(x)", ("a",)),
        ("INSERT INTO a (x) VALUES (1) ON CONFLICT (x) DO UPDATE SET x = excluded.x", ("a",)),
        ("INSERT INTO a (x) VALUES (1) ON CONFLICT ON CONSTRAINT pk DO NOTHING", ("a",)),
        ("SAVEPOINT sa_1", ()),
        ("COMMENT ON COLUMN a.x IS 'the x'", ("a",)),
        ("COMMENT ON COLUMN s.a.x IS NULL", ("s.a",)),
        ("COMMENT ON TABLE a IS 'the a'", ("a",)),
    ],
)
def test_tables(sql: str, tables: tuple[str, ...]) -> None:
    assert analyze(sql).tables == tables


def test_tables_with_backslash_escapes() -> None:
    sql = "SELECT * FROM `a` WHERE x = 'it\\'s FROM b' AND y IN (SELECT y FROM c)"
    assert analyze(sql, True).tables == ("a", "c")


def test_mysql_double_quotes_take_backslash_escapes() -> None:
    # a string (or, under ANSI_QUOTES, a name) whose escaped quotes must not end it early
    sql = 'UPDATE a SET x = "a\\"b", y = (SELECT max(y) FROM c), z = "q"'
    assert analyze(sql, True).tables == ("a", "c")


def test_mysql_hash_comments() -> None:
    # "#" starts a comment to the end of the line; a quote inside it opens no string
    info = analyze("UPDATE a SET x = 1 # it's FROM b\nUPDATE c SET y = 2", True)
    assert info.tables == ("a", "c")
    assert info.fingerprint == "update a set x = ? update c set y = ?"


def test_hash_is_an_operator_outside_mysql() -> None:
    assert analyze("SELECT j #> '{a}' FROM t").tables == ("t",)
