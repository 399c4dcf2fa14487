"""core.policy: the patient's ABAC language — parser, errors, printer, msgpack, evaluation."""

from __future__ import annotations

from datetime import datetime, timezone

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import policy as P
from core._policy_model import RESERVED_ATTRIBUTES, RESERVED_OPERATIONS, TIME_MAX, condition_depth
from core.errors import CoreError, DecodeError, PolicyError
from core.policy import (
    And,
    Compare,
    Decision,
    Has,
    Member,
    Not,
    ObjectSpec,
    Or,
    Policy,
    PolicySyntaxError,
    Request,
    Rule,
    TimeWindow,
    parse,
)


def ts(s: str) -> int:
    """'2026-01-05T09:00' -> Unix seconds, UTC."""
    return int(datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp())


EXAMPLE = """\
policy "cardiology-sharing" version 1
default deny
# a comment
rule cardio-read:
  allow read on label "cardiology", label "labs"
  when role == "doctor" and department in ["cardiology", "emergency"] and not org == "acme"
  during 2026-01-01T00:00Z .. 2027-01-01T00:00Z, hours 08:00-18:00, days mon-fri
  purpose in ["treatment"]
  approval auto
rule er-any:
  allow read on all when role == "doctor" and department == "emergency" approval patient
rule block-x:
  deny read on record "rec-123" when org == "other"
"""


# ---------------------------------------------------------------------------
# Parsing: happy paths


def test_parse_example_structure():
    p = parse(EXAMPLE)
    assert (p.name, p.version, p.default_effect, p.default_approval) == ("cardiology-sharing", 1, "deny", None)
    assert [r.id for r in p.rules] == ["cardio-read", "er-any", "block-x"]
    r = p.rules[0]
    assert r.effect == "allow" and r.approval == "auto"
    assert r.operations == ("read",)
    assert r.objects == (ObjectSpec("label", "cardiology"), ObjectSpec("label", "labs"))
    assert r.condition == And(
        (
            Compare("role", "==", "doctor"),
            Member("department", ("cardiology", "emergency")),
            Not(Compare("org", "==", "acme")),
        )
    )
    assert r.window == TimeWindow(ts("2026-01-01T00:00"), ts("2027-01-01T00:00"), (480, 1080), (0, 1, 2, 3, 4))
    assert r.purposes == ("treatment",)
    assert p.rules[1].objects == (ObjectSpec("all"),) and p.rules[1].approval == "patient"
    b = p.rules[2]
    assert (b.effect, b.approval, b.objects) == ("deny", None, (ObjectSpec("record", "rec-123"),))


def test_header_defaults():
    p = parse('policy "p"')
    assert (p.version, p.default_effect, p.default_approval, p.rules) == (1, "deny", None, ())
    assert parse('policy "p" version 7 default allow').default_approval == "patient"
    assert parse('policy "p" default allow approval auto').default_approval == "auto"


def test_allow_rule_without_approval_needs_patient():
    p = parse('policy "p" rule a: allow read on all')
    assert p.rules[0].approval == "patient"


def test_clauses_in_any_order_and_whitespace_free_layout():
    a = parse('policy "p" rule a: allow read on all approval auto purpose == "x" when has role during days sat')
    b = parse('policy "p"\nrule a:\n allow read on all\n when has role\n during days sat\n purpose in ["x"]\n approval auto\n')
    assert a == b


@pytest.mark.parametrize(
    "cond, expected",
    [
        ('a == 1 or b == 2 and c == 3', Or((Compare("a", "==", 1), And((Compare("b", "==", 2), Compare("c", "==", 3)))))),
        ('(a == 1 or b == 2) and c == 3', And((Or((Compare("a", "==", 1), Compare("b", "==", 2))), Compare("c", "==", 3)))),
        ('not a == 1 and b != 2', And((Not(Compare("a", "==", 1)), Compare("b", "!=", 2)))),
        ('not (a == 1 and b == 2)', Not(And((Compare("a", "==", 1), Compare("b", "==", 2))))),
        ('not not has x', Not(Not(Has("x")))),
        ('a not in ["x", 2, true]', Member("a", ("x", 2, True), negated=True)),
        ('a in [false]', Member("a", (False,))),
        ('a == -5', Compare("a", "==", -5)),
        ('a == true', Compare("a", "==", True)),
        ('a-b_c == "\\"q\\" \\\\ \\n \\u00e9 \\U0001F600"', Compare("a-b_c", "==", '"q" \\ \n é \U0001F600')),
        ('a == 1 and b == 2 and c == 3', And((Compare("a", "==", 1), Compare("b", "==", 2), Compare("c", "==", 3)))),
        ('(a == 1 and b == 2) and c == 3', And((And((Compare("a", "==", 1), Compare("b", "==", 2))), Compare("c", "==", 3)))),
        ('((has a))', Has("a")),
        ('when == "x"', Compare("when", "==", "x")),  # keywords other than operators are fine as names
    ],
)
def test_condition_grammar(cond, expected):
    p = parse(f'policy "p" rule r: allow read on all when {cond}')
    assert p.rules[0].condition == expected


@pytest.mark.parametrize(
    "during, window",
    [
        ("2026-01-01 .. 2026-02-01", TimeWindow(ts("2026-01-01T00:00"), ts("2026-02-01T00:00"))),
        ("from 2026-01-01T08:30:15Z", TimeWindow(valid_from=ts("2026-01-01T08:30:15"))),
        ("until 2026-01-01T08:30Z", TimeWindow(valid_until=ts("2026-01-01T08:30"))),
        ("from 2026-01-01, until 2026-03-01", TimeWindow(ts("2026-01-01T00:00"), ts("2026-03-01T00:00"))),
        ("hours 22:00-06:00", TimeWindow(hours=(1320, 360))),
        ("hours 8:00-24:00", TimeWindow(hours=(480, 1440))),
        ("days mon-fri, sun", TimeWindow(days=(0, 1, 2, 3, 4, 6))),
        ("days fri-mon", TimeWindow(days=(0, 4, 5, 6))),
        ("days sat, sun, hours 10:00-12:00", TimeWindow(hours=(600, 720), days=(5, 6))),
        ("days wed, wed", TimeWindow(days=(2,))),
    ],
)
def test_time_grammar(during, window):
    p = parse(f'policy "p" rule r: allow read on all during {during}')
    assert p.rules[0].window == window


def test_operations_extensible_and_any():
    p = parse('policy "p" rule r: allow read, write, share, export_pdf on all rule s: deny any on record "x"')
    assert p.rules[0].operations == ("read", "write", "share", "export_pdf")
    assert p.rules[1].operations == ("any",)


# ---------------------------------------------------------------------------
# Parsing: errors point at the offending place


def _err(text: str) -> PolicySyntaxError:
    with pytest.raises(PolicySyntaxError) as info:
        parse(text)
    e = info.value
    assert isinstance(e, PolicyError) and isinstance(e, ValueError) and isinstance(e, CoreError)
    return e


R = 'policy "p"\nrule r:\n  '  # the rule body starts at line 3, column 3


# Each text marks the offending place with §, removed before parsing.
@pytest.mark.parametrize(
    "marked, message, expected",
    [
        ('§polcy "p"', "unexpected 'polcy'", "'policy'"),
        ("policy §p", "unexpected 'p'", "double quotes"),
        ('policy "p" version §-1', "must not be negative", None),
        ('policy "p" default §maybe', "unexpected 'maybe'", "'deny' or 'allow'"),
        ('policy "p" default deny §approval auto', "cannot carry an approval", None),
        ('policy "p" §rules', "unexpected 'rules'", "'rule'"),
        ('policy §"p\nrule r:', "string is not closed", "closing"),
        (R + 'allow read on all when role §= "d"', "single '='", "'=='"),
        (R + 'allow read on all when role §! = "d"', "single '!'", "'!='"),
        (R + 'allow read on all when role == §doctor', "'doctor' is not a value", '"doctor"'),
        (R + 'allow read on all when role §is "d"', "unexpected 'is'", "==, !=, in or not in"),
        (R + 'allow read on all when role == "d" §adn x == 1', "unexpected 'adn'", "'and', 'or'"),
        (R + 'allow read on all when (role == "d"§', "unexpected the end", "')'"),
        (R + 'allow read on all when §in == "d"', "unexpected 'in'", "a condition"),
        (R + "allow read on all when has §in", "reserved word", None),
        (R + "allow read on all when a in [§]", "the list is empty", "at least one"),
        (R + 'allow read on all when a in ["x", 1, §"x"]', "appears twice", None),
        (R + 'allow read on all when a == "§\\q"', "unknown escape", "\\n"),
        (R + 'allow read on all when a == "§\\u12"', "malformed \\u escape", None),
        (R + 'allow read on all when a == "§\\udc00"', "does not name a character", None),
        (R + 'allow read on all when a == "x§\ty"', "control character", None),
        (R + "allow read on all when a == §\u201cx\u201d", "straight double quotes", None),
        (R + "allow read on all when a == §12ab", "malformed number", None),
        (R + "allow read on all when a == §99999999999999999999", "64-bit", None),
        (R + "allow read on all when a == 1 §@", "unexpected character '@'", None),
        (R + "allow read §all", "unexpected 'all'", "'on'"),
        (R + "allow read, §on all", "not an operation", None),
        (R + "allow read, §read on all", "listed twice", None),
        (R + "allow read, §any on all", "'any' already covers", None),
        (R + 'allow read on all, §label "x"', "'all' already covers", None),
        (R + 'allow read on label "x", §label "x"', "listed twice", None),
        (R + "allow read on label §x", "unexpected 'x'", 'label "cardiology"'),
        (R + "§permit read on all", "unexpected 'permit'", "'allow' or 'deny'"),
        (R + "deny read on all §approval auto", "deny rule cannot carry an approval", None),
        (R + "allow read on all approval §maybe", "unexpected 'maybe'", "'auto' or 'patient'"),
        (R + "allow read on all when has a §when has b", "'when' appears twice", None),
        (R + "allow read on all during §2026-01-01T08:00", "malformed date-time", "ending in Z"),
        (R + "allow read on all during §2026-02-30", "invalid date-time", None),
        (R + "allow read on all during 2026-01-01§", "unexpected the end", "'..'"),
        (R + "allow read on all during 2026-02-01 .. §2026-01-01", "ends before it starts", None),
        (R + "allow read on all during from 2026-02-01, until §2026-02-01", "ends before it starts", None),
        (R + "allow read on all during until 2026-02-01, from §2026-03-01", "starts after it ends", None),
        (R + "allow read on all during from 2026-01-01, §from 2026-01-02", "given twice", None),
        (R + "allow read on all during hours §25:00-26:00", "invalid time of day", "00:00 to 24:00"),
        (R + "allow read on all during hours 08:00-§00:00", "written 24:00", None),
        (R + "allow read on all during hours 08:00-§08:00", "window is empty", None),
        (R + "allow read on all during hours §24:00-08:00", "cannot start at 24:00", None),
        (R + "allow read on all during hours 08:00 §18:00", "unexpected time", "'-'"),
        (R + "allow read on all during days §moon", "not a day", "mon, tue"),
        (R + "allow read on all during days §mon-tue-wed", "not a day", None),
        (R + "allow read on all during days mon, hours 01:00-02:00, §days tue", "'days' is given twice", None),
        (R + "allow read on all during §weekends", "unexpected 'weekends'", "hours HH:MM-HH:MM"),
        (R + 'allow read on all purpose §"x"', "unexpected string", "'==' or 'in'"),
        (R + 'allow read on all purpose in ["x", §"x"]', "listed twice", None),
        ('policy "p" rule §default: allow read on all', "reserved", None),
        ('policy "p" rule a: allow read on all\nrule §a: allow read on all', "already used", None),
        ('policy "p"\n\trule r: allow read on all when\n\t  a == 1 or\n\t  §) ', "unexpected ')'", "a condition"),
    ],
)
def test_parse_errors_point_at_the_place(marked, message, expected):
    pos = marked.index("§")
    text = marked.replace("§", "")
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    e = _err(text)
    assert (e.line, e.column) == (line, col), str(e)
    assert message in e.message, str(e)
    if expected is not None:
        assert e.expected is not None and expected in e.expected, str(e)
    # The excerpt shows the offending line with a caret under the column.
    src_line = text.split("\n")[line - 1]
    shown, caret = e.excerpt.split("\n")
    printable = "".join(c if c.isprintable() else " " for c in src_line)
    assert shown.startswith("    ") and set(caret[:-1]) == {" "} and caret.endswith("^")
    assert shown[4:].strip(".") in printable  # long lines are windowed with "..."
    at = caret.index("^")
    assert shown[at:].strip(".") == printable[col - 1 :][: len(shown[at:].strip("."))]
    assert str(e).startswith(f"line {line}, column {col}: ")


def test_excerpt_of_a_long_line_is_windowed():
    text = 'policy "p" rule r: allow read on all when ' + " and ".join(f"a{i} == {i}" for i in range(40)) + " @"
    e = _err(text)
    shown, caret = e.excerpt.split("\n")
    assert len(shown) < 100 and shown.startswith("    ...")
    assert shown[caret.index("^")] == "@"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: 'policy "p" ' + "#" * P.MAX_TEXT_CHARS, "characters long; the limit"),
        (lambda: 'policy "p"' + "".join(f" rule r{i}: allow read on all" for i in range(P.MAX_RULES + 1)), "too many rules"),
        (lambda: 'policy "p" rule r: allow read on all when ' + "(" * (P.MAX_DEPTH + 1) + "has a" + ")" * (P.MAX_DEPTH + 1), "nested too deeply"),
        (lambda: 'policy "p" rule r: allow read on all when ' + "not " * (P.MAX_DEPTH + 1) + "has a", "nested too deeply"),
        (lambda: 'policy "p" rule r: allow read on all when a in [' + ", ".join(str(i) for i in range(P.MAX_LIST + 1)) + "]", "list is too long"),
        (lambda: 'policy "p" rule r: allow read on all when a == "' + "x" * (P.MAX_STRING + 1) + '"', "string is"),
        (lambda: 'policy "p" rule r' + "x" * P.MAX_NAME + ": allow read on all", "name is"),
        (lambda: 'policy "p" rule r: allow read on all when ' + " or ".join(f"a == {i}" for i in range(P.MAX_CONDITION_NODES)), "parts; the limit"),
        (lambda: 'policy "p" rule r: allow ' + ", ".join(f"op{i}" for i in range(P.MAX_LIST + 1)) + " on all", "too many operations"),
    ],
)
def test_limits(make, message):
    e = _err(make())
    assert message in e.message


def test_depth_limit_from_flat_and_or_alternation():
    # (a and b) or ... nested via parentheses: AST depth grows faster than parenthesis depth.
    cond = "has a"
    for _ in range(P.MAX_DEPTH // 2 + 1):
        cond = f"({cond} or has b) and has c"
    e = _err(f'policy "p" rule r: allow read on all when {cond}')
    assert "nested" in e.message and (e.line, e.column) == (1, 38)  # at 'when'


def test_non_str_text():
    with pytest.raises(PolicyError):
        parse(b'policy "p"')  # type: ignore[arg-type]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list('policy "p" rule r: allow deny read on all label when == != in not has and or ( ) [ ] , - .. : 08:00 2026-01-01 T Z \\ \n # 1 true x days mon hours during purpose approval auto patient from until default version')), max_size=120))
def test_parse_fuzz_raises_only_policy_error(text):
    try:
        p = parse(text)
    except PolicySyntaxError as e:
        assert e.line >= 1 and e.column >= 1
    else:
        assert parse(p.to_text()) == p


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_parse_fuzz_unicode(text):
    try:
        parse(text)
    except PolicySyntaxError:
        pass


# ---------------------------------------------------------------------------
# Model validation


@pytest.mark.parametrize(
    "make",
    [
        lambda: Has("in"),
        lambda: Has("1abc"),
        lambda: Compare("a", "=", 1),
        lambda: Compare("a", "==", 1.5),
        lambda: Compare("a", "==", 2**63),
        lambda: Compare("a", "==", "\ud800"),
        lambda: Member("a", ()),
        lambda: Member("a", (1, 1)),
        lambda: Member("a", ["x"]),
        lambda: And((Has("a"),)),
        lambda: Or((Has("a"), "b")),
        lambda: Not("x"),
        lambda: ObjectSpec("all", "x"),
        lambda: ObjectSpec("label"),
        lambda: ObjectSpec("folder", "x"),
        lambda: TimeWindow(),
        lambda: TimeWindow(10, 10),
        lambda: TimeWindow(-1),
        lambda: TimeWindow(hours=(0, 0)),
        lambda: TimeWindow(hours=(1440, 10)),
        lambda: TimeWindow(hours=(10, 1441)),
        lambda: TimeWindow(days=(2, 1)),
        lambda: TimeWindow(days=(7,)),
        lambda: Rule("default", "allow", ("read",), (ObjectSpec("all"),), approval="auto"),
        lambda: Rule("r", "allow", ("read",), (ObjectSpec("all"),)),
        lambda: Rule("r", "deny", ("read",), (ObjectSpec("all"),), approval="auto"),
        lambda: Rule("r", "allow", ("on",), (ObjectSpec("all"),), approval="auto"),
        lambda: Rule("r", "allow", ("any", "read"), (ObjectSpec("all"),), approval="auto"),
        lambda: Rule("r", "allow", ("read",), (), approval="auto"),
        lambda: Rule("r", "allow", ("read",), (ObjectSpec("all"),), purposes=("x", "x"), approval="auto"),
        lambda: Rule("r", "allow", ("read",), (ObjectSpec("all"),), condition=_deep(P.MAX_DEPTH + 1), approval="auto"),
        lambda: Policy("p", -1),
        lambda: Policy("p", 1, (Rule("r", "deny", ("read",), (ObjectSpec("all"),)),) * 2),
        lambda: Policy("p", 1, default_effect="allow"),
        lambda: Policy("p", 1, default_approval="auto"),
    ],
)
def test_model_rejects_invalid_values(make):
    with pytest.raises(PolicyError):
        make()


def _deep(depth: int):
    c = Has("a")
    for _ in range(depth - 1):
        c = Not(c)
    return c


def test_values_are_typed():
    assert Compare("a", "==", 1) != Compare("a", "==", True)
    assert Member("a", (1,)) != Member("a", (True,))
    assert Compare("a", "==", 1) == Compare("a", "==", 1)
    assert hash(Compare("a", "==", "x")) == hash(Compare("a", "==", "x"))
    assert Compare("a", "==", 1).holds({"a": 1})
    assert not Compare("a", "==", 1).holds({"a": True})
    assert not Compare("a", "==", "1").holds({"a": 1})
    assert not Member("a", (False,)).holds({"a": 0})


# ---------------------------------------------------------------------------
# Evaluation

POLICY = parse(EXAMPLE)
MON_9 = ts("2026-01-05T09:00")  # 2026-01-05 is a Monday


def req(attrs=None, *, op="read", record="rec-1", label="cardiology", time=MON_9, purpose="treatment"):
    if attrs is None:
        attrs = {"role": "doctor", "department": "cardiology", "org": "hosp-a"}
    return Request(attrs, op, record, label, time, purpose)


@pytest.mark.parametrize(
    "request_, effect, approval, rule",
    [
        (req(), "allow", "auto", "cardio-read"),
        (req(label="labs"), "allow", "auto", "cardio-read"),
        (req(label="oncology"), "deny", None, "default"),
        (req(label=None), "deny", None, "default"),
        (req({"role": "nurse", "department": "cardiology"}), "deny", None, "default"),
        (req({"role": "doctor", "department": "oncology"}), "deny", None, "default"),
        (req({"role": "doctor", "department": "emergency"}), "allow", "auto", "cardio-read"),
        (req({"role": "doctor", "department": "cardiology", "org": "acme"}), "deny", None, "default"),  # not org == acme
        (req({"role": "doctor", "department": "cardiology"}), "allow", "auto", "cardio-read"),  # missing org: == false, not -> true
        (req(op="write"), "deny", None, "default"),
        (req(purpose="research"), "deny", None, "default"),
        (req(purpose=None), "deny", None, "default"),
        # time: hours [08:00, 18:00), Mon-Fri, valid [2026-01-01, 2027-01-01)
        (req(time=ts("2026-01-05T08:00")), "allow", "auto", "cardio-read"),
        (req(time=ts("2026-01-05T07:59:59")), "deny", None, "default"),
        (req(time=ts("2026-01-05T17:59:59")), "allow", "auto", "cardio-read"),
        (req(time=ts("2026-01-05T18:00")), "deny", None, "default"),
        (req(time=ts("2026-01-09T09:00")), "allow", "auto", "cardio-read"),  # Friday
        (req(time=ts("2026-01-10T09:00")), "deny", None, "default"),  # Saturday
        (req(time=ts("2026-01-11T09:00")), "deny", None, "default"),  # Sunday
        (req(time=ts("2025-12-31T09:00")), "deny", None, "default"),  # before valid_from (a Wednesday)
        (req(time=ts("2026-12-31T09:00")), "allow", "auto", "cardio-read"),  # Thursday, still valid
        # emergency doctors: any record, any purpose, any time, patient approves
        (req({"role": "doctor", "department": "emergency"}, label="oncology", purpose=None), "allow", "patient", "er-any"),
        (req({"role": "doctor", "department": "emergency"}, time=ts("2026-01-10T03:00")), "allow", "patient", "er-any"),
        # deny overrides an earlier matching allow
        (req({"role": "doctor", "department": "emergency", "org": "other"}, record="rec-123"), "deny", None, "block-x"),
        (req({"role": "doctor", "department": "emergency", "org": "other"}, record="rec-124"), "allow", "auto", "cardio-read"),
    ],
)
def test_evaluation_table(request_, effect, approval, rule):
    d = POLICY.evaluate(request_)
    assert (d.effect, d.approval, d.rule) == (effect, approval, rule), d.reason
    assert d.allowed == (effect == "allow")
    assert (d.policy, d.version) == ("cardiology-sharing", 1)


def test_valid_from_until_boundaries():
    p = parse('policy "p" rule r: allow read on all during 2026-01-01T00:00Z .. 2026-01-02T00:00Z approval auto')
    at = lambda t: p.evaluate(req(time=t)).effect  # noqa: E731
    assert at(ts("2026-01-01T00:00")) == "allow"  # from is inclusive
    assert at(ts("2026-01-01T00:00") - 1) == "deny"
    assert at(ts("2026-01-02T00:00") - 1) == "allow"
    assert at(ts("2026-01-02T00:00")) == "deny"  # until is exclusive
    assert "before the validity period" in p.evaluate(req(time=0)).reason
    assert "after the validity period" in p.evaluate(req(time=ts("2030-01-01T00:00"))).reason


def test_hours_wrap_past_midnight_and_days():
    # Night shift opening on Fridays: Fri 22:00 .. Sat 06:00.
    p = parse('policy "p" rule night: allow read on all during hours 22:00-06:00, days fri approval auto')
    at = lambda s: p.evaluate(req(time=ts(s))).effect  # noqa: E731
    assert at("2026-01-09T22:00") == "allow"  # Friday evening
    assert at("2026-01-09T23:59:59") == "allow"
    assert at("2026-01-10T00:00") == "allow"  # Saturday early morning: opened Friday
    assert at("2026-01-10T05:59:59") == "allow"
    assert at("2026-01-10T06:00") == "deny"
    assert at("2026-01-09T21:59:59") == "deny"
    assert at("2026-01-09T03:00") == "deny"  # Friday early morning belongs to Thursday's window
    assert at("2026-01-10T22:00") == "deny"  # Saturday evening
    q = parse('policy "p" rule night: allow read on all during hours 22:00-06:00 approval auto')
    assert q.evaluate(req(time=ts("2026-01-07T03:00"))).allowed
    assert not q.evaluate(req(time=ts("2026-01-07T12:00"))).allowed


def test_hours_until_midnight():
    p = parse('policy "p" rule r: allow read on all during hours 20:00-24:00 approval auto')
    assert p.evaluate(req(time=ts("2026-01-07T23:59:59"))).allowed
    assert not p.evaluate(req(time=ts("2026-01-08T00:00"))).allowed


def test_time_range_constant():
    assert TIME_MAX == ts("9999-12-31T23:59:59")
    assert parse('policy "p" rule r: allow read on all during until 9999-12-31T23:59:59Z').rules[0].window.valid_until == TIME_MAX


def test_weekday():
    assert P.weekday(0) == 3  # 1970-01-01, Thursday
    assert [P.weekday(ts(f"2026-01-{d:02d}T12:00")) for d in range(5, 12)] == list(range(7))


@pytest.mark.parametrize(
    "cond, attrs, holds",
    [
        ('role == "doctor"', {"role": "doctor"}, True),
        ('role != "doctor"', {"role": "nurse"}, True),
        ('role != "doctor"', {}, False),  # missing attribute: every comparison is false
        ('role not in ["nurse"]', {}, False),
        ('role not in ["nurse"]', {"role": "doctor"}, True),
        ('not has role', {}, True),
        ('has specialty', {"specialty": ""}, True),
        ('level == 3', {"level": 3}, True),
        ('level in [1, 2, 3]', {"level": 2}, True),
        ('on_call == true', {"on_call": True}, True),
        ('on_call == true', {"on_call": "true"}, False),
        ('a == 1 or b == 2 and c == 3', {"a": 1}, True),
        ('a == 1 or b == 2 and c == 3', {"b": 2}, False),
        ('(a == 1 or b == 2) and c == 3', {"a": 1}, False),
        ('not (a == 1 or b == 2)', {"c": 1}, True),
    ],
)
def test_condition_evaluation(cond, attrs, holds):
    p = parse(f'policy "p" rule r: allow read on all when {cond} approval auto')
    assert p.evaluate(req(attrs)).allowed is holds


def test_purpose_and_operations():
    p = parse('policy "p" rule r: allow any on record "x" purpose == "treatment" approval auto')
    assert p.evaluate(req(op="share", record="x")).allowed
    assert not p.evaluate(req(op="share", record="y")).allowed
    assert not p.evaluate(req(record="x", purpose="marketing")).allowed
    assert "purpose 'marketing' not allowed" in p.evaluate(req(record="x", purpose="marketing")).reason


def test_deny_overrides_and_first_allow_wins():
    p = parse(
        'policy "p"\n'
        "rule a: allow read on all approval patient\n"
        "rule b: allow read on all approval auto\n"
        'rule c: deny write on all\n'
    )
    d = p.evaluate(req())
    assert (d.effect, d.approval, d.rule) == ("allow", "patient", "a")
    d = p.evaluate(req(op="write"))
    assert (d.effect, d.rule) == ("deny", "c")
    q = parse('policy "p" rule a: allow read on all approval auto rule z: deny read on label "cardiology"')
    d = q.evaluate(req())
    assert (d.effect, d.rule) == ("deny", "z")
    assert "override" in d.reason and "'a'" in d.reason


def test_default_allow_and_empty_policy():
    p = parse('policy "p" default allow approval patient rule x: deny read on record "secret"')
    d = p.evaluate(req())
    assert (d.effect, d.approval, d.rule) == ("allow", "patient", "default")
    assert p.evaluate(req(record="secret")).effect == "deny"
    e = parse('policy "empty"').evaluate(req())
    assert (e.effect, e.approval, e.rule) == ("deny", None, "default")
    assert "no rules" in e.reason


def test_reason_lists_why_rules_missed():
    d = POLICY.evaluate(req({"role": "nurse"}, time=ts("2026-01-10T09:00")))
    assert d.rule == "default"
    assert "cardio-read: not on an allowed day" in d.reason
    assert "er-any: requester's attributes do not satisfy the condition" in d.reason
    assert "block-x: record not covered" in d.reason


def test_evaluation_ignores_attribute_order():
    attrs = {"role": "doctor", "department": "emergency", "org": "other"}
    a = POLICY.evaluate(req(attrs, record="rec-123"))
    b = POLICY.evaluate(req(dict(reversed(list(attrs.items()))), record="rec-123"))
    assert a == b


def test_request_is_validated_and_copied():
    attrs = {"role": "doctor"}
    r = Request(attrs, "read", "x", None, 5)
    attrs["role"] = "nurse"
    assert r.attributes["role"] == "doctor"
    for bad in [
        lambda: Request({"a": 1.5}, "read", "x", None, 5),
        lambda: Request({1: "a"}, "read", "x", None, 5),
        lambda: Request({}, "read", "x", None, -1),
        lambda: Request({}, "read", "x", None, True),
        lambda: Request({}, "read", "x", 3, 5),
    ]:
        with pytest.raises(PolicyError):
            bad()
    with pytest.raises(TypeError):
        POLICY.evaluate({"role": "doctor"})  # type: ignore[arg-type]


def test_decision_to_dict_is_plain_msgpackable():
    d = POLICY.evaluate(req())
    out = d.to_dict()
    assert out == {
        "effect": "allow",
        "approval": "auto",
        "rule": "cardio-read",
        "reason": d.reason,
        "policy": "cardiology-sharing",
        "version": 1,
    }
    assert msgpack.unpackb(msgpack.packb(out, strict_types=True)) == out
    assert Decision(**out) == d


# ---------------------------------------------------------------------------
# Printer and msgpack form


def test_to_text_of_example_reparses_and_is_stable():
    p = parse(EXAMPLE)
    text = p.to_text()
    assert parse(text) == p
    assert parse(text).to_text() == text
    assert 'during 2026-01-01T00:00Z .. 2027-01-01T00:00Z, hours 08:00-18:00, days mon-fri' in text


def test_msgpack_canonical_shape():
    p = parse('policy "p" version 2 rule r: deny read on label "x" when has a')
    obj = msgpack.unpackb(p.to_msgpack())
    assert list(obj) == sorted(obj) == ["default", "format", "kind", "name", "rules", "version"]
    assert obj["kind"] == "policy" and obj["format"] == 1
    assert obj["rules"][0] == {
        "approval": None,
        "effect": "deny",
        "id": "r",
        "objects": [{"kind": "label", "value": "x"}],
        "operations": ["read"],
        "purposes": None,
        "when": {"attr": "a", "op": "has"},
        "window": None,
    }
    assert list(obj["rules"][0]) == sorted(obj["rules"][0])
    assert Policy.from_msgpack(p.to_msgpack()) == p


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _good_obj():
    return msgpack.unpackb(POLICY.to_msgpack())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.__setitem__("kind", "policie"), "kind"),
        (lambda o: o.__setitem__("format", 2), "format"),
        (lambda o: o.__setitem__("version", 1.0), "integer"),
        (lambda o: o.__setitem__("version", -1), "version"),
        (lambda o: o.__setitem__("name", b"p"), "string"),
        (lambda o: o.__setitem__("extra", 1), "unexpected"),
        (lambda o: o.pop("rules"), "missing"),
        (lambda o: o["rules"].append(o["rules"][0]), "used twice"),
        (lambda o: o["rules"][0].__setitem__("effect", "maybe"), "effect"),
        (lambda o: o["rules"][0]["when"].__setitem__("op", "xor"), "unknown condition operator"),
        (lambda o: o["rules"][0]["when"]["args"][0].__setitem__("value", 1.5), "string, integer or boolean"),
        (lambda o: o["rules"][0]["when"].__setitem__("args", [o["rules"][0]["when"]["args"][0]]), "at least two"),
        (lambda o: o["rules"][0]["window"].__setitem__("days", [4, 1]), "sorted"),
        (lambda o: o["rules"][0]["window"].__setitem__("hours", [1, 2, 3]), "limit"),
        (lambda o: o["rules"][0]["window"].__setitem__("valid_until", 0), "empty"),
        (lambda o: o["rules"][2].__setitem__("approval", "auto"), "deny rule"),
        (lambda o: o["rules"].__setitem__(0, "rule"), "expected a map"),
    ],
)
def test_msgpack_decoder_rejects_bad_shapes(mutate, message):
    o = _good_obj()
    mutate(o)
    with pytest.raises(DecodeError) as info:
        Policy.from_msgpack(_pack(o))
    assert message in str(info.value)


def test_msgpack_decoder_rejects_non_canonical_encodings():
    good = POLICY.to_msgpack()
    o = msgpack.unpackb(good)
    # Same content, keys in another order.
    reordered = _pack(dict(reversed(list(o.items()))))
    assert msgpack.unpackb(reordered) == o
    with pytest.raises(DecodeError, match="canonical"):
        Policy.from_msgpack(reordered)
    # Same content, version as a 64-bit integer instead of a fixint.
    packer = msgpack.Packer(use_bin_type=True)
    body = b"".join(packer.pack(k) + (b"\xcf" + (1).to_bytes(8, "big") if k == "version" else packer.pack(v)) for k, v in o.items())
    wide = b"\x86" + body
    assert msgpack.unpackb(wide) == o
    with pytest.raises(DecodeError, match="canonical"):
        Policy.from_msgpack(wide)
    # Duplicate key: the later value would silently win.
    dup = b"\x87" + packer.pack("name") + packer.pack("evil") + _pack(o)[1:]
    with pytest.raises(DecodeError):
        Policy.from_msgpack(dup)
    # Trailing bytes, truncation, wrong type, size limit.
    for bad in (good + b"\x00", good[:-1], b"", b"\xc1"):
        with pytest.raises(DecodeError):
            Policy.from_msgpack(bad)
    with pytest.raises(DecodeError):
        Policy.from_msgpack("text")  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="limit"):
        Policy.from_msgpack(b"\x00" * (P.MAX_MSGPACK_BYTES + 1))
    # Extension types and deep nesting.
    with pytest.raises(DecodeError):
        Policy.from_msgpack(_pack(msgpack.ExtType(5, b"x")))
    with pytest.raises(DecodeError):
        Policy.from_msgpack(b"\x91" * 5000 + b"\xc0")


def test_msgpack_decoder_bounds_condition_depth():
    o = _good_obj()
    c = {"op": "has", "attr": "a"}
    for _ in range(P.MAX_DEPTH + 1):
        c = {"arg": c, "op": "not"}
    o["rules"][0]["when"] = c
    with pytest.raises(DecodeError, match="nested"):
        Policy.from_msgpack(_pack(o))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_msgpack_garbage_raises_only_decode_error(data):
    try:
        p = Policy.from_msgpack(data)
    except DecodeError:
        return
    assert p.to_msgpack() == data


@settings(max_examples=300)
@given(st.data())
def test_msgpack_mutations_raise_only_decode_error(data):
    good = bytearray(POLICY.to_msgpack())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    try:
        p = Policy.from_msgpack(bytes(good))
    except DecodeError:
        return
    assert p.to_msgpack() == bytes(good)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["kind", "format", "name", "version", "default", "rules", "op", "attr", "args", "x"]), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300)
@given(_msgpack_values)
def test_msgpack_structured_garbage_raises_only_decode_error(obj):
    try:
        Policy.from_msgpack(_pack(obj))
    except DecodeError:
        pass


# ---------------------------------------------------------------------------
# Random policies: text and msgpack round trips

_KEYWORDS = (
    "policy version default allow deny approval auto patient rule on all label record when during purpose "
    "from until hours days mon fri any read and or not in has true false"
).split()
_names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(-[A-Za-z0-9_]{1,4})?", fullmatch=True),
    st.sampled_from(_KEYWORDS),  # keywords are fine as names wherever they cannot be misread
)
_attrs = _names.filter(lambda n: n not in RESERVED_ATTRIBUTES)
_ops = _names.filter(lambda n: n not in RESERVED_OPERATIONS and n != "any")
_strings = st.text(max_size=12)
_values = st.one_of(_strings, st.integers(P.INT_MIN, P.INT_MAX), st.booleans())
_leaves = st.one_of(
    st.builds(Has, _attrs),
    st.builds(Compare, _attrs, st.sampled_from(["==", "!="]), _values),
    st.builds(
        Member,
        _attrs,
        st.lists(_values, min_size=1, max_size=4, unique_by=lambda v: (type(v).__name__, v)).map(tuple),
        st.booleans(),
    ),
)
_conditions = st.recursive(
    _leaves,
    lambda c: st.one_of(
        st.builds(Not, c),
        st.lists(c, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(c, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=8,
).filter(lambda c: condition_depth(c) <= P.MAX_DEPTH)


@st.composite
def _windows(draw):
    a = draw(st.none() | st.integers(0, TIME_MAX - 1))
    b = draw(st.none() | st.integers((a or 0) + 1, TIME_MAX))
    hours = draw(st.none() | st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(lambda h: h[0] != h[1]))
    days = draw(st.none() | st.sets(st.integers(0, 6), min_size=1).map(lambda s: tuple(sorted(s))))
    if a is None and b is None and hours is None and days is None:
        days = (0,)
    return TimeWindow(a, b, hours, days)


_objects = st.one_of(
    st.just((ObjectSpec("all"),)),
    st.lists(st.builds(ObjectSpec, st.sampled_from(["label", "record"]), _strings), min_size=1, max_size=3, unique=True).map(tuple),
)


@st.composite
def _rules(draw, rule_id):
    effect = draw(st.sampled_from(["allow", "deny"]))
    return Rule(
        id=rule_id,
        effect=effect,
        operations=draw(st.just(("any",)) | st.lists(_ops, min_size=1, max_size=3, unique=True).map(tuple)),
        objects=draw(_objects),
        condition=draw(st.none() | _conditions),
        window=draw(st.none() | _windows()),
        purposes=draw(st.none() | st.lists(_strings, min_size=1, max_size=3, unique=True).map(tuple)),
        approval=draw(st.sampled_from(["auto", "patient"])) if effect == "allow" else None,
    )


@st.composite
def policies(draw):
    ids = draw(st.lists(_names.filter(lambda n: n != "default"), max_size=4, unique=True))
    effect = draw(st.sampled_from(["allow", "deny"]))
    return Policy(
        name=draw(_strings),
        version=draw(st.integers(0, P.INT_MAX)),
        rules=tuple(draw(_rules(i)) for i in ids),
        default_effect=effect,
        default_approval=draw(st.sampled_from(["auto", "patient"])) if effect == "allow" else None,
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_text_round_trip(p):
    text = p.to_text()
    assert parse(text) == p
    assert parse(text).to_text() == text


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_msgpack_round_trip_is_canonical(p):
    b = p.to_msgpack()
    q = Policy.from_msgpack(b)
    assert q == p
    assert q.to_msgpack() == b
    assert parse(p.to_text()).to_msgpack() == b


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.dictionaries(_attrs, _values, max_size=4), st.integers(0, TIME_MAX), st.data())
def test_evaluation_is_deterministic_and_consistent(p, attrs, t, data):
    r = Request(attrs, data.draw(_ops | st.just("read")), data.draw(_strings), data.draw(st.none() | _strings), t,
                data.draw(st.none() | _strings))
    d = p.evaluate(r)
    assert d == Policy.from_msgpack(p.to_msgpack()).evaluate(r) == parse(p.to_text()).evaluate(r)
    matching = [rule for rule in p.rules if rule.miss(r) is None]
    if any(m.effect == "deny" for m in matching):
        assert (d.effect, d.rule) == ("deny", next(m.id for m in matching if m.effect == "deny"))
    elif matching:
        assert (d.effect, d.approval, d.rule) == ("allow", matching[0].approval, matching[0].id)
    else:
        assert (d.effect, d.approval, d.rule) == (p.default_effect, p.default_approval, "default")


def test_public_names_exported_once():
    names = [n for n in dir(P) if not n.startswith("_")]
    for n in ["parse", "Policy", "Rule", "Request", "Decision", "TimeWindow", "ObjectSpec", "Has", "Compare",
              "Member", "Not", "And", "Or", "PolicySyntaxError", "PolicyError", "DecodeError", "format_condition"]:
        assert n in names


def test_docs_example_and_module_doctest():
    import doctest
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    example = doc.split("## An example", 1)[1].split("```", 2)[1]
    p = parse(example)
    assert [r.id for r in p.rules] == ["cardio-read", "er-any", "block-x"]
    d = p.evaluate(Request({"role": "doctor", "department": "cardiology", "org": "hosp-a"}, "read", "rec-1",
                           "cardiology", 1767603600, "treatment"))
    assert (d.effect, d.approval, d.rule) == ("allow", "auto", "cardio-read")
    assert doctest.testmod(P).failed == 0


# ---------------------------------------------------------------------------
# Layout: the model at the bottom, the forms on it, core.policy on top.


def _imports(module) -> set[str]:
    """Every module ``module``'s source imports, at any level (relative ones as ".name")."""
    import ast
    import inspect

    out = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def test_the_policy_modules_import_downwards_only():
    from core import _policy_codec, _policy_model, _policy_text

    forms = {"._policy_text", "._policy_codec", "core._policy_text", "core._policy_codec"}
    assert not _imports(_policy_model) & (forms | {".policy", "core.policy"})
    assert "._policy_model" in _imports(_policy_text) and "._policy_model" in _imports(_policy_codec)
    assert not _imports(_policy_text) & {"._policy_codec", ".policy", "core.policy"}
    assert not _imports(_policy_codec) & {"._policy_text", ".policy", "core.policy"}


def test_parsed_decoded_and_built_policies_are_one_class():
    built = Policy("p", 2, (), "allow", "auto")
    parsed = parse(built.to_text())
    decoded = Policy.from_msgpack(built.to_msgpack())
    assert type(parsed) is type(decoded) is Policy
    assert parsed == decoded == built and hash(parsed) == hash(built)
    assert parsed.to_msgpack() == built.to_msgpack()
