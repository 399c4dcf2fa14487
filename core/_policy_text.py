"""The policy text language: tokenizer, recursive-descent parser and printer.

The grammar is documented in docs/policy.md. ``format_policy`` prints the
canonical text and ``parse_policy(format_policy(p), Policy) == p`` for every
policy. The parser builds the class it is given (core.policy passes its
``Policy``), so this module imports only the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

from ._policy_model import (
    DAY_NAMES, DEFAULT_RULE, INT_MAX, INT_MIN, MAX_DEPTH, MAX_LIST, MAX_NAME, MAX_RULES, MAX_STRING, MAX_TEXT_CHARS,
    NAME_RE, RESERVED_ATTRIBUTES, RESERVED_OPERATIONS, And, Compare, Condition, Has, Member, Not, ObjectSpec,
    BasePolicy, Or, Rule, TimeWindow, Value, check_condition_limits,
)
from ._policy_model import MAX_EMERGENCY_COSIGN, MAX_EMERGENCY_WINDOW, Emergency
from .errors import PolicyError

P = TypeVar("P", bound=BasePolicy)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_SECOND = timedelta(seconds=1)


class PolicySyntaxError(PolicyError):
    """A policy text that does not parse. Carries where and what was expected.

    ``line`` and ``column`` are 1-based (columns count characters);
    ``excerpt`` is the offending line with a caret under the place;
    ``expected`` is a short hint of what would have been valid there.
    """

    def __init__(self, message: str, line: int, column: int, excerpt: str, expected: str | None = None):
        text = f"line {line}, column {column}: {message}"
        if expected:
            text += f" (expected {expected})"
        text += "\n" + excerpt
        super().__init__(text)
        self.message = message
        self.line = line
        self.column = column
        self.excerpt = excerpt
        self.expected = expected


def _locate(text: str, pos: int) -> tuple[int, int, str]:
    pos = max(0, min(pos, len(text)))
    line = text.count("\n", 0, pos) + 1
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    if end < 0:
        end = len(text)
    col = pos - start + 1
    src = text[start:end]
    # Keep the excerpt short around the column on very long lines.
    lo = max(0, col - 1 - 40)
    hi = min(len(src), col - 1 + 40)
    shown = ("..." if lo > 0 else "") + src[lo:hi] + ("..." if hi < len(src) else "")
    caret_at = (col - 1 - lo) + (3 if lo > 0 else 0)
    shown = "".join(ch if ch.isprintable() else " " for ch in shown)
    return line, col, f"    {shown}\n    {' ' * caret_at}^"


def _error(text: str, pos: int, message: str, expected: str | None = None) -> PolicySyntaxError:
    line, col, excerpt = _locate(text, pos)
    return PolicySyntaxError(message, line, col, excerpt, expected)


# ---------------------------------------------------------------------------
# Tokenizer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # name, string, int, datetime, time, punct, eof
    text: str  # source text (for names and punctuation: the exact word)
    value: object  # decoded value: str, int (ints; Unix seconds; minutes of day)
    pos: int


_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_CLOCK_RE = re.compile(r"T(\d{2}):(\d{2})(?::(\d{2}))?Z")
_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})(?![\d:])")
_INT_RE = re.compile(r"-?\d+")
_PUNCT2 = ("==", "!=", "..")
_PUNCT1 = ":,()[]-"
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    n = len(text)
    i = 0
    while True:
        while i < n:
            ch = text[i]
            if ch in " \t\r\n":
                i += 1
            elif ch == "#":
                j = text.find("\n", i)
                i = n if j < 0 else j
            else:
                break
        if i >= n:
            tokens.append(_Token("eof", "", None, n))
            return tokens
        ch = text[i]
        if ch == '"':
            tok, i = _string(text, i)
        elif ch.isdigit() and ch.isascii():
            tok, i = _number(text, i)
        elif ch == "-" and i + 1 < n and text[i + 1].isdigit() and text[i + 1].isascii():
            m = _INT_RE.match(text, i)
            assert m is not None
            if m.end() < n and text[m.end()] == ":":
                tok, i = _Token("punct", "-", None, i), i + 1  # "08:00-18:00"
            else:
                tok, i = _int(text, i, m)
        elif ch == "_" or (ch.isascii() and ch.isalpha()):
            m = NAME_RE.match(text, i)
            assert m is not None
            word = m.group()
            if len(word) > MAX_NAME:
                raise _error(text, i, f"name is {len(word)} characters long; the limit is {MAX_NAME}")
            tok, i = _Token("name", word, word, i), m.end()
        elif text.startswith(_PUNCT2, i):
            tok, i = _Token("punct", text[i : i + 2], None, i), i + 2
        elif ch in _PUNCT1:
            tok, i = _Token("punct", ch, None, i), i + 1
        elif ch == "=":
            raise _error(text, i, "a single '=' is not an operator", "'==' to compare")
        elif ch == "!":
            raise _error(text, i, "a single '!' is not an operator", "'!=' or 'not'")
        elif ch in "\u201c\u201d'":
            raise _error(text, i, "strings are written in straight double quotes", '"like this"')
        else:
            raise _error(text, i, f"unexpected character {ch!r}")
        tokens.append(tok)


def _string(text: str, start: int) -> tuple[_Token, int]:
    out: list[str] = []
    i = start + 1
    n = len(text)
    while True:
        if i >= n or text[i] == "\n":
            raise _error(text, start, "string is not closed", "a closing '\"' on the same line")
        ch = text[i]
        if ch == '"':
            i += 1
            break
        if ch == "\\":
            e = text[i + 1] if i + 1 < n else ""
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
            elif e in ("u", "U"):
                width = 4 if e == "u" else 8
                hexits = text[i + 2 : i + 2 + width]
                if len(hexits) != width or not all(c in "0123456789abcdefABCDEF" for c in hexits):
                    raise _error(text, i, f"malformed \\{e} escape", f"\\{e} and {width} hex digits")
                code = int(hexits, 16)
                if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                    raise _error(text, i, f"\\{e} escape does not name a character")
                out.append(chr(code))
                i += 2 + width
            else:
                raise _error(text, i, "unknown escape in string", '\\", \\\\, \\n, \\t, \\r, \\uXXXX or \\UXXXXXXXX')
            continue
        if not ch.isprintable() and ch != " ":
            raise _error(text, i, "control character inside a string", "an escape such as \\t or \\u0000")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise _error(text, i, "lone surrogate inside a string")
        out.append(ch)
        i += 1
    s = "".join(out)
    if len(s) > MAX_STRING:
        raise _error(text, start, f"string is {len(s)} characters long; the limit is {MAX_STRING}")
    return _Token("string", text[start:i], s, start), i


def _int(text: str, start: int, m: re.Match) -> tuple[_Token, int]:
    end = m.end()
    if end < len(text) and (text[end].isalnum() or text[end] == "_"):
        raise _error(text, start, "malformed number", "digits only, e.g. 42")
    digits = m.group()
    if len(digits) > 25:
        raise _error(text, start, "integer is too long")
    v = int(digits)
    if not INT_MIN <= v <= INT_MAX:
        raise _error(text, start, "integer is outside the 64-bit signed range")
    return _Token("int", digits, v, start), end


def _number(text: str, start: int) -> tuple[_Token, int]:
    """A date or date-time, a time of day, or an integer."""
    m = _DATE_RE.match(text, start)
    if m:
        year, month, day = (int(g) for g in m.groups())
        end = m.end()
        hour = minute = second = 0
        if end < len(text) and text[end] == "T":
            c = _CLOCK_RE.match(text, end)
            if not c:
                raise _error(text, start, "malformed date-time", "a UTC time like 2026-01-01T08:00Z (ending in Z)")
            hour, minute = int(c.group(1)), int(c.group(2))
            second = int(c.group(3) or 0)
            end = c.end()
        if end < len(text) and (text[end].isalnum() or text[end] in "_:"):
            raise _error(text, start, "malformed date-time", "a UTC date like 2026-01-01 or 2026-01-01T08:00Z")
        try:
            dt = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
        except ValueError as e:
            raise _error(text, start, f"invalid date-time: {e}") from None
        seconds = (dt - _EPOCH) // _ONE_SECOND
        if seconds < 0:
            raise _error(text, start, "date-time is before 1970-01-01")
        return _Token("datetime", text[start:end], seconds, start), end
    m = _TIME_RE.match(text, start)
    if m:
        h, mi = int(m.group(1)), int(m.group(2))
        if mi > 59 or h > 24 or (h == 24 and mi != 0):
            raise _error(text, start, "invalid time of day", "HH:MM from 00:00 to 24:00")
        return _Token("time", m.group(), h * 60 + mi, start), m.end()
    m = _INT_RE.match(text, start)
    assert m is not None
    return _int(text, start, m)




# ---------------------------------------------------------------------------
# Parser

_CLAUSES = ("when", "during", "purpose", "approval")


def _describe(tok: _Token) -> str:
    if tok.kind == "eof":
        return "the end of the text"
    if tok.kind == "name":
        return f"'{tok.text}'"
    if tok.kind == "punct":
        return f"'{tok.text}'"
    shown = tok.text if len(tok.text) <= 30 else tok.text[:27] + "..."
    return f"{tok.kind} {shown}"


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self._last_clause = ""

    # -- token helpers -------------------------------------------------------

    def peek(self, k: int = 0) -> _Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def is_word(self, word: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "name" and tok.text == word

    def is_punct(self, p: str) -> bool:
        tok = self.peek()
        return tok.kind == "punct" and tok.text == p

    def fail(self, tok: _Token, message: str, expected: str | None = None) -> PolicySyntaxError:
        return _error(self.text, tok.pos, message, expected)

    def unexpected(self, expected: str) -> PolicySyntaxError:
        tok = self.peek()
        return self.fail(tok, f"unexpected {_describe(tok)}", expected)

    def word(self, word: str, expected: str | None = None) -> _Token:
        if not self.is_word(word):
            raise self.unexpected(expected or f"'{word}'")
        return self.advance()

    def punct(self, p: str, expected: str | None = None) -> _Token:
        if not self.is_punct(p):
            raise self.unexpected(expected or f"'{p}'")
        return self.advance()

    def kind(self, kind: str, expected: str) -> _Token:
        if self.peek().kind != kind:
            raise self.unexpected(expected)
        return self.advance()

    def choice(self, words: tuple[str, ...]) -> _Token:
        tok = self.peek()
        if tok.kind == "name" and tok.text in words:
            return self.advance()
        raise self.unexpected(" or ".join(f"'{w}'" for w in words))

    # -- policy --------------------------------------------------------------

    def policy(self, cls: type[P]) -> P:
        self.word("policy", "'policy' to start, as in: policy \"my sharing\" version 1")
        name = self.kind("string", 'the policy name in double quotes, e.g. "my sharing"').value
        version = 1
        if self.is_word("version"):
            self.advance()
            tok = self.kind("int", "a version number, e.g. 1")
            if tok.value < 0:
                raise self.fail(tok, "version must not be negative")
            version = tok.value
        default_effect, default_approval = "deny", None
        has_default = self.is_word("default")
        if has_default:
            self.advance()
            default_effect = self.choice(("deny", "allow")).text
            if self.is_word("approval"):
                tok = self.advance()
                if default_effect == "deny":
                    raise self.fail(tok, "'default deny' cannot carry an approval")
                default_approval = self.choice(("auto", "patient")).text
            elif default_effect == "allow":
                default_approval = "patient"
        emergency = None
        if self.is_word("emergency"):
            emergency = self.emergency()
        rules: list[Rule] = []
        ids: set[str] = set()
        while self.is_word("rule"):
            if len(rules) >= MAX_RULES:
                raise self.fail(self.peek(), f"too many rules; the limit is {MAX_RULES}")
            rules.append(self.rule(ids))
        if self.peek().kind != "eof":
            expected = "'rule' or the end of the text"
            if not rules and emergency is None:
                expected = "'emergency', " + expected
            if not rules and emergency is None and not has_default:
                expected = "'default', " + expected
            raise self.unexpected(expected)
        return cls(name, version, tuple(rules), default_effect, default_approval, emergency)

    def emergency(self) -> Emergency:
        """``emergency roles NAME {, NAME} cosign INT window INT`` (seconds)."""
        self.advance()  # 'emergency'
        self.word("roles", "'roles' and the roles that may break the glass, e.g. roles doctor")
        roles = [self.kind("name", "a role name, e.g. doctor")]
        while self.is_punct(","):
            self.advance()
            roles.append(self.kind("name", "a role name, e.g. doctor"))
        seen: set[str] = set()
        for tok in roles:
            if tok.text in seen:
                raise self.fail(tok, f"role {tok.text!r} is listed twice")
            seen.add(tok.text)
        self.word("cosign", "'cosign' and how many officers must co-sign, e.g. cosign 2")
        cosign = self.kind("int", "the number of co-signing officers, e.g. 2")
        if not 1 <= cosign.value <= MAX_EMERGENCY_COSIGN:
            raise self.fail(cosign, f"cosign must be 1..{MAX_EMERGENCY_COSIGN}")
        self.word("window", "'window' and the access's length in seconds, e.g. window 3600")
        window = self.kind("int", "the access's length in seconds, e.g. 3600")
        if not 1 <= window.value <= MAX_EMERGENCY_WINDOW:
            raise self.fail(window, f"window must be 1..{MAX_EMERGENCY_WINDOW} seconds")
        return Emergency(tuple(t.text for t in roles), cosign.value, window.value)

    def rule(self, ids: set[str]) -> Rule:
        start = self.advance()  # 'rule'
        id_tok = self.kind("name", "a rule name, e.g. cardio-read")
        rule_id = id_tok.text
        if rule_id == DEFAULT_RULE:
            raise self.fail(id_tok, f"'{DEFAULT_RULE}' is reserved and cannot name a rule")
        if rule_id in ids:
            raise self.fail(id_tok, f"rule name '{rule_id}' is already used")
        ids.add(rule_id)
        self.punct(":", "':' after the rule name")
        effect = self.choice(("allow", "deny")).text
        operations = self.operations()
        self.word("on", "',' and another operation, or 'on'")
        objects = self.objects()

        seen: dict[str, _Token] = {}
        condition = window = purposes = approval = None
        while self.peek().kind == "name" and self.peek().text in _CLAUSES:
            kw = self.advance()
            if kw.text in seen:
                raise self.fail(kw, f"'{kw.text}' appears twice in rule '{rule_id}'")
            seen[kw.text] = kw
            if kw.text == "when":
                condition = self.condition(kw)
            elif kw.text == "during":
                window = self.during()
            elif kw.text == "purpose":
                purposes = self.purpose()
            else:
                if effect == "deny":
                    raise self.fail(kw, "a deny rule cannot carry an approval")
                approval = self.choice(("auto", "patient")).text
                self._last_clause = "approval"
        if self.peek().kind != "eof" and not self.is_word("rule"):
            options = []
            if self._last_clause == "when":
                options += ["'and'", "'or'"]
            elif self._last_clause == "objects":
                options += ["','"]
            options += [f"'{c}'" for c in _CLAUSES if c not in seen and not (c == "approval" and effect == "deny")]
            raise self.unexpected(", ".join(options + ["the next 'rule'", "the end of the text"]))
        if effect == "allow" and approval is None:
            approval = "patient"
        try:
            return Rule(rule_id, effect, operations, objects, condition, window, purposes, approval)
        except PolicyError as e:  # a check the parser did not make itself
            raise self.fail(start, str(e)) from None

    def operations(self) -> tuple[str, ...]:
        ops: list[str] = []
        while True:
            tok = self.kind("name", "an operation such as read, write, share or any")
            if tok.text in RESERVED_OPERATIONS:
                raise self.fail(tok, f"'{tok.text}' is not an operation", "an operation such as read before 'on'")
            if tok.text in ops:
                raise self.fail(tok, f"operation '{tok.text}' is listed twice")
            if (tok.text == "any" and ops) or "any" in ops:
                raise self.fail(tok, "'any' already covers every operation; list it alone")
            if len(ops) >= MAX_LIST:
                raise self.fail(tok, f"too many operations; the limit is {MAX_LIST}")
            ops.append(tok.text)
            if not self.is_punct(","):
                return tuple(ops)
            self.advance()

    def objects(self) -> tuple[ObjectSpec, ...]:
        objs: list[ObjectSpec] = []
        while True:
            tok = self.peek()
            kind = self.choice(("all", "label", "record")).text
            value = None
            if kind != "all":
                value = self.kind("string", f'the {kind} in double quotes, e.g. {kind} "cardiology"').value
            spec = ObjectSpec(kind, value)
            if spec in objs:
                raise self.fail(tok, "this object is listed twice")
            if objs and (kind == "all" or objs[0].kind == "all"):
                raise self.fail(tok, "'all' already covers every record; list it alone")
            if len(objs) >= MAX_LIST:
                raise self.fail(tok, f"too many objects; the limit is {MAX_LIST}")
            objs.append(spec)
            self._last_clause = "objects"
            if not self.is_punct(","):
                return tuple(objs)
            self.advance()

    # -- conditions ----------------------------------------------------------

    def condition(self, when: _Token) -> Condition:
        c = self.or_expr(0)
        self._last_clause = "when"
        try:
            check_condition_limits(c)
        except PolicyError as e:
            raise self.fail(when, str(e)) from None
        return c

    def or_expr(self, depth: int) -> Condition:
        return self.joined("or", Or, self.and_expr, depth)

    def and_expr(self, depth: int) -> Condition:
        return self.joined("and", And, self.not_expr, depth)

    def joined(self, word: str, make: type[And] | type[Or],
               operand: Callable[[int], Condition], depth: int) -> Condition:
        """``operand (word operand)*``: the lone operand, or ``make`` of them all."""
        items = [operand(depth)]
        while self.is_word(word):
            self.advance()
            items.append(operand(depth))
        return items[0] if len(items) == 1 else make(tuple(items))

    def not_expr(self, depth: int) -> Condition:
        if self.is_word("not"):
            tok = self.advance()
            if depth + 1 > MAX_DEPTH:
                raise self.fail(tok, f"condition is nested too deeply; the limit is {MAX_DEPTH}")
            return Not(self.not_expr(depth + 1))
        return self.primary(depth)

    def primary(self, depth: int) -> Condition:
        tok = self.peek()
        if self.is_punct("("):
            self.advance()
            if depth + 1 > MAX_DEPTH:
                raise self.fail(tok, f"condition is nested too deeply; the limit is {MAX_DEPTH}")
            c = self.or_expr(depth + 1)
            self.punct(")", "'and', 'or' or ')'")
            return c
        if self.is_word("has"):
            self.advance()
            return Has(self.attribute())
        if tok.kind != "name" or tok.text in RESERVED_ATTRIBUTES:
            raise self.unexpected("a condition: an attribute name (role, department, ...), 'has', 'not' or '('")
        name = self.attribute()
        op = self.peek()
        if op.kind == "punct" and op.text in ("==", "!="):
            self.advance()
            return Compare(name, op.text, self.value())
        if self.is_word("in"):
            self.advance()
            return Member(name, self.value_list(name), False)
        if self.is_word("not") and self.is_word("in", 1):
            self.advance()
            self.advance()
            return Member(name, self.value_list(name), True)
        raise self.unexpected(f"an operator after '{name}': ==, !=, in or not in")

    def attribute(self) -> str:
        tok = self.kind("name", "an attribute name such as role or department")
        if tok.text in RESERVED_ATTRIBUTES:
            raise self.fail(tok, f"'{tok.text}' is a reserved word, not an attribute name")
        return tok.text

    def value(self) -> Value:
        tok = self.peek()
        if tok.kind in ("string", "int"):
            return self.advance().value  # type: ignore[return-value]
        if self.is_word("true") or self.is_word("false"):
            return self.advance().text == "true"
        if tok.kind == "name":
            raise self.fail(tok, f"'{tok.text}' is not a value", f'a string in double quotes such as "{tok.text}", a number, true or false')
        raise self.unexpected('a value: a string in double quotes, a number, true or false')

    def value_list(self, name: str) -> tuple[Value, ...]:
        self.punct("[", 'a list in square brackets, e.g. ["a", "b"]')
        if self.is_punct("]"):
            raise self.fail(self.peek(), "the list is empty", "at least one value")
        values: list[Value] = []
        keys: set[tuple[str, Value]] = set()
        while True:
            tok = self.peek()
            v = self.value()
            key = (type(v).__name__, v)
            if key in keys:
                raise self.fail(tok, f"value {tok.text} appears twice in the list for '{name}'")
            if len(values) >= MAX_LIST:
                raise self.fail(tok, f"the list is too long; the limit is {MAX_LIST} values")
            keys.add(key)
            values.append(v)
            if self.is_punct("]"):
                self.advance()
                return tuple(values)
            self.punct(",", "',' or ']'")

    # -- time, purpose -------------------------------------------------------

    def _period_end(self, valid_from: int | None, expected: str) -> int:
        """The validity period's end date (``expected`` says what one looks like),
        which must come after ``valid_from`` when that is given."""
        end = self.kind("datetime", expected)
        if valid_from is not None and end.value <= valid_from:
            raise self.fail(end, "the validity period ends before it starts", "an end later than the start")
        return end.value

    def _time_part(self, word: str, given: object, what: str) -> bool:
        """Whether the next part of a ``during`` clause starts with ``word`` (then it is
        consumed); ``given`` is that part's value so far, and ``what`` names the part
        in the error when it is not None (the part is given twice)."""
        if not self.is_word(word):
            return False
        tok = self.advance()
        if given is not None:
            raise self.fail(tok, f"{what} is given twice")
        return True

    def during(self) -> TimeWindow:
        valid_from = valid_until = hours = days = None
        while True:
            tok = self.peek()
            if tok.kind == "datetime":
                if valid_from is not None or valid_until is not None:
                    raise self.fail(tok, "the validity period is given twice")
                valid_from = self.advance().value
                self.punct("..", "'..' and the end date, e.g. 2026-01-01 .. 2027-01-01")
                valid_until = self._period_end(valid_from, "the end date, e.g. 2027-01-01T00:00Z")
            elif self._time_part("from", valid_from, "the start of the validity period"):
                from_tok = self.kind("datetime", "a UTC date such as 2026-01-01 or 2026-01-01T08:00Z")
                valid_from = from_tok.value
                if valid_until is not None and valid_until <= valid_from:
                    raise self.fail(from_tok, "the validity period starts after it ends")
            elif self._time_part("until", valid_until, "the end of the validity period"):
                valid_until = self._period_end(valid_from, "a UTC date such as 2027-01-01 or 2027-01-01T00:00Z")
            elif self._time_part("hours", hours, "'hours'"):
                start = self.kind("time", "a start time such as 08:00")
                if start.value == 1440:
                    raise self.fail(start, "a window cannot start at 24:00", "00:00 to 23:59")
                self.punct("-", "'-' and the end time, e.g. 08:00-18:00")
                end = self.kind("time", "an end time such as 18:00")
                if end.value == 0:
                    raise self.fail(end, "a window ending at midnight is written 24:00", "24:00")
                if end.value == start.value:
                    raise self.fail(end, "the hours window is empty", "an end different from the start")
                hours = (start.value, end.value)
            elif self._time_part("days", days, "'days'"):
                days = self.days()
            else:
                raise self.unexpected("a time: 2026-01-01 .. 2027-01-01, from DATE, until DATE, hours HH:MM-HH:MM or days mon-fri")
            if not self.is_punct(","):
                break
            self.advance()
        self._last_clause = "during"
        return TimeWindow(valid_from, valid_until, hours, days)

    def days(self) -> tuple[int, ...]:
        chosen: set[int] = set()
        while True:
            tok = self.kind("name", "a day (mon, tue, wed, thu, fri, sat, sun) or a range such as mon-fri")
            parts = tok.text.split("-")
            if len(parts) > 2 or not all(p in DAY_NAMES for p in parts):
                raise self.fail(tok, f"'{tok.text}' is not a day or a range of days", "mon, tue, wed, thu, fri, sat, sun or a range such as mon-fri")
            a = DAY_NAMES.index(parts[0])
            b = DAY_NAMES.index(parts[-1])
            span = (b - a) % 7 + 1  # fri-mon wraps over the weekend
            chosen.update((a + k) % 7 for k in range(span))
            # A ',' continues the day list only if a day follows; else it separates time parts.
            nxt = self.peek(1)
            if self.is_punct(",") and nxt.kind == "name" and nxt.text.split("-")[0] in DAY_NAMES:
                self.advance()
                continue
            return tuple(sorted(chosen))

    def purpose(self) -> tuple[str, ...]:
        tok = self.peek()
        if self.is_punct("=="):
            self.advance()
            return (self.kind("string", 'a purpose in double quotes, e.g. "treatment"').value,)
        if not self.is_word("in"):
            raise self.unexpected("'==' or 'in' after 'purpose'")
        self.advance()
        self.punct("[", 'a list of purposes, e.g. ["treatment", "emergency"]')
        out: list[str] = []
        while True:
            tok = self.kind("string", 'a purpose in double quotes, e.g. "treatment"')
            if tok.value in out:
                raise self.fail(tok, "this purpose is listed twice")
            if len(out) >= MAX_LIST:
                raise self.fail(tok, f"too many purposes; the limit is {MAX_LIST}")
            out.append(tok.value)
            if self.is_punct("]"):
                self.advance()
                self._last_clause = "purpose"
                return tuple(out)
            self.punct(",", "',' or ']'")


def parse_policy(text: str, cls: type[P]) -> P:
    """Parse the text language into a ``cls`` (core.policy.Policy)."""
    if not isinstance(text, str):
        raise PolicyError(f"policy text must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise _error(text, MAX_TEXT_CHARS, f"policy text is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}")
    return _Parser(text).policy(cls)


# ---------------------------------------------------------------------------
# Printer


def quote(s: str) -> str:
    """A string literal that the tokenizer reads back as ``s``."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable() and ch != " ":
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_value(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return quote(v)


def format_condition(c: Condition) -> str:
    if isinstance(c, Has):
        return f"has {c.attribute}"
    if isinstance(c, Compare):
        return f"{c.attribute} {c.op} {format_value(c.value)}"
    if isinstance(c, Member):
        values = ", ".join(format_value(v) for v in c.values)
        return f"{c.attribute} {'not in' if c.negated else 'in'} [{values}]"
    if isinstance(c, Not):
        inner = format_condition(c.operand)
        return f"not ({inner})" if isinstance(c.operand, (And, Or)) else f"not {inner}"
    if isinstance(c, And):
        # An and/or operand needs parentheses: or binds looser, and a nested
        # and must stay nested to print back to the same tree.
        return " and ".join(
            f"({format_condition(o)})" if isinstance(o, (And, Or)) else format_condition(o) for o in c.operands
        )
    assert isinstance(c, Or)
    return " or ".join(f"({format_condition(o)})" if isinstance(o, Or) else format_condition(o) for o in c.operands)


def format_datetime(t: int) -> str:
    d = datetime.fromtimestamp(t, tz=timezone.utc)
    s = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}"
    if d.second:
        s += f":{d.second:02d}"
    return s + "Z"


def format_minutes(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def format_days(days: tuple[int, ...]) -> str:
    runs: list[list[int]] = []
    for d in days:
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}")
        else:
            parts.extend(DAY_NAMES[d] for d in run)
    return ", ".join(parts)


def format_window(w: TimeWindow) -> str:
    parts = []
    if w.valid_from is not None and w.valid_until is not None:
        parts.append(f"{format_datetime(w.valid_from)} .. {format_datetime(w.valid_until)}")
    elif w.valid_from is not None:
        parts.append(f"from {format_datetime(w.valid_from)}")
    elif w.valid_until is not None:
        parts.append(f"until {format_datetime(w.valid_until)}")
    if w.hours is not None:
        parts.append(f"hours {format_minutes(w.hours[0])}-{format_minutes(w.hours[1])}")
    if w.days is not None:
        parts.append(f"days {format_days(w.days)}")
    return ", ".join(parts)


def format_object(o: ObjectSpec) -> str:
    return "all" if o.kind == "all" else f"{o.kind} {quote(o.value or '')}"


def format_purposes(purposes: tuple[str, ...]) -> str:
    """What follows ``purpose`` in a rule: ``== "x"`` for one purpose, else ``in ["x", "y"]``."""
    if len(purposes) == 1:
        return f"== {quote(purposes[0])}"
    return f"in [{', '.join(quote(p) for p in purposes)}]"


def format_rule(r: Rule) -> str:
    objects = ", ".join(format_object(o) for o in r.objects)
    lines = [f"rule {r.id}:", f"  {r.effect} {', '.join(r.operations)} on {objects}"]
    # The optional clauses, each on its own line, in the order of _CLAUSES.
    clauses: tuple[tuple[str, Any, Callable[[Any], str]], ...] = (
        ("when", r.condition, format_condition), ("during", r.window, format_window),
        ("purpose", r.purposes, format_purposes), ("approval", r.approval, str))
    lines += [f"  {word} {fmt(value)}" for word, value, fmt in clauses if value is not None]
    return "\n".join(lines)


def format_policy(p: BasePolicy) -> str:
    head = f"policy {quote(p.name)} version {p.version}\n"
    head += "default deny\n" if p.default_effect == "deny" else f"default allow approval {p.default_approval}\n"
    if p.emergency is not None:
        e = p.emergency
        head += f"emergency roles {', '.join(e.roles)} cosign {e.cosign} window {e.window}\n"
    return head + "".join("\n" + format_rule(r) + "\n" for r in p.rules)
