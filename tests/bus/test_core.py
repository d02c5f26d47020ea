"""busd._core against the pure-Python oracle (tests/oracle.py): examples and property tests."""

import json
import os
import pathlib
import re
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from busd import _core as core

try:
    from . import oracle
except ImportError:  # tests/ is not a package
    import oracle

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WIRE = pathlib.Path(__file__).resolve().parents[1] / "data" / "go-sdk-wire.json"

# --------------------------------------------------------------------------- helpers


def outcome(fn, *args):
    """("ok", value) or ("err", message) of a call."""
    try:
        return "ok", fn(*args)
    except ValueError as e:
        return "err", str(e)


def scan_outcome(fn, body):
    """Normalised scan result: ok + fields, a JSON syntax error, or a shape error + message."""
    try:
        is_batch, events = fn(body)
    except oracle.JSONSyntaxError:
        return ("syntax",)
    except ValueError as e:
        msg = str(e)
        if msg.startswith("invalid JSON at byte "):
            assert re.fullmatch(r"invalid JSON at byte \d+: [^\n]+", msg), msg
            return ("syntax",)
        return ("shape", msg)
    return ("ok", is_batch, [tuple(getattr(ev, k) for k in oracle.Event.__slots__)
                             for ev in events])


def assert_same_scan(body):
    got = scan_outcome(core.scan_body, body)
    want = scan_outcome(oracle.scan_body, body)
    assert got == want, body
    if got[0] == "ok":  # the size the API checks against --max-event-size, without a copy
        assert [ev.payload_size for ev in core.scan_body(body)[1]] == \
            [len(ev[-1] or b"") for ev in got[2]]
    return got


# --------------------------------------------------------------------------- subjects

TOKENS = [b"a", b"b", b"orders", b"A-_9", b"*", b">", b"", b"x*", b">y", b"**", b"#", b" ",
          b"\x00", b"\xc3\xa9", b"_bus_", b"\n", b"b$", b"caf\xc3\xa9", b"\xc3", b"\xed\xa0\x80",
          b"\xc2\xa0", b"\xc2\x85", b"\xe3\x80\x80", b"\xf0\x9f\x98\x80", b'"', b"\\", b"\x7f",
          b"\xe2\x80\x8b", b"\xf4\x90\x80\x80"]
token_lists = st.lists(st.sampled_from(TOKENS), min_size=0, max_size=6)
subjectish = (token_lists.map(b".".join)
              | st.binary(max_size=12)
              | st.text(alphabet="ab.*>#-", max_size=10).map(str.encode)
              | st.text(max_size=6).map(lambda t: ("a." + t).encode()))


def test_every_code_point_is_judged_as_the_oracle_does():
    """NATS's token rule (no whitespace, no control characters) plus busd's '"' and '\\',
    checked on each of the 1,112,064 Unicode scalar values against unicodedata."""
    differ = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or chr(cp) in ".*>":
            continue
        subject = ("a." + chr(cp)).encode()
        try:
            core.validate_subject(subject)
            refused = False
        except ValueError:
            refused = True
        if refused != oracle.forbidden(chr(cp)):
            differ.append(hex(cp))
    assert differ == []


@pytest.mark.parametrize("pattern,subject,want", [
    (b"orders.*", b"orders.created", True),
    (b"orders.*", b"orders.eu.created", False),
    (b"orders.>", b"orders.created", True),
    (b"orders.>", b"orders.eu.created", True),
    (b"orders.>", b"orders", True),  # `>` is zero or more segments, as in Bus
    (b"orders.eu.>", b"orders.eu", True),
    (b"orders.eu.>", b"orders.e", False),
    (b"orders.eu.>", b"orders.euro", False),
    (b"orders.*.>", b"orders", False),
    (b"orders.*.created", b"orders.eu.created", True),
    (b"orders.*.created", b"orders.eu.deleted", False),
    (b"orders.created", b"orders.created", True),
    (b"orders.created", b"orders.created.x", False),
    (b"orders.*.>", b"orders.eu", True),
    (b"a.caf\xc3\xa9.>", b"a.caf\xc3\xa9", True),
    (b"a.*", b"a.b$", True),
    (b"orders.*.>", b"orders.eu.x.y", True),
    (b"app.>", b"apple.x", False),
])
def test_match_examples(pattern, subject, want):
    core.validate_pattern(pattern)
    if b"." in subject:
        core.validate_subject(subject)
    assert core.match_subject(pattern, subject) is want
    assert core.Pattern(pattern).matches(subject) is want


@pytest.mark.parametrize("subject,reason", [
    (b"app", "subject must have at least two segments (namespace.topic): 'app'"),
    (b"a.*", "subject contains a wildcard: 'a.*'"),
    (b"a.>", "subject contains a wildcard: 'a.>'"),
    (b"a.b c", f"invalid character ' ' in subject 'a.b c': {oracle.TOKEN_RULE}"),
    (b"a.b\tc", f"invalid character '\\x09' in subject 'a.b\\x09c': {oracle.TOKEN_RULE}"),
    (b"a.b\xc2\xa0c", f"invalid character 'U+00A0' in subject 'a.b\\xa0c': {oracle.TOKEN_RULE}"),
    (b"a.\xe3\x80\x80", f"invalid character 'U+3000' in subject 'a.\\u3000': {oracle.TOKEN_RULE}"),
    (b"a.\xc2\x85", f"invalid character 'U+0085' in subject 'a.\\x85': {oracle.TOKEN_RULE}"),
    (b'a.b"', f"invalid character '\"' in subject 'a.b\"': {oracle.TOKEN_RULE}"),
    (b"a.b\\", f"invalid character '\\' in subject 'a.b\\': {oracle.TOKEN_RULE}"),
    (b"a.\xed\xa0\x80", "subject is not valid UTF-8 (at byte 2): 'a.\\xed\\xa0\\x80'"),
    (b"a.caf\xc3", "subject is not valid UTF-8 (at byte 5): 'a.caf\\xc3'"),
    (b"a..b", "empty segment in subject 'a..b'"),
    (b".a", "empty segment in subject '.a'"),
    (b"a.b.", "empty segment in subject 'a.b.'"),
    (b"", "subject is empty"),
    (b"a.b\n", f"invalid character '\\x0a' in subject 'a.b\\x0a': {oracle.TOKEN_RULE}"),
])
def test_validate_subject_examples(subject, reason):
    with pytest.raises(ValueError) as e:
        core.validate_subject(subject)
    assert str(e.value) == reason


@pytest.mark.parametrize("pattern,reason", [
    (b"a", "pattern must have at least two segments (namespace.topic): 'a'"),
    (b"*.a", "namespace may not be a wildcard: '*.a'"),
    (b">", "namespace may not be a wildcard: '>'"),
    (b"a.>.b", "'>' must be the last segment in pattern 'a.>.b'"),
    (b"a.b*", "wildcard '*' must be a whole segment in pattern 'a.b*'"),
    (b"a.>b", "wildcard '>' must be a whole segment in pattern 'a.>b'"),
    (b"a..b", "empty segment in pattern 'a..b'"),
    (b"a.b c", f"invalid character ' ' in pattern 'a.b c': {oracle.TOKEN_RULE}"),
    (b"a.\xff", "pattern is not valid UTF-8 (at byte 2): 'a.\\xff'"),
])
def test_validate_pattern_examples(pattern, reason):
    with pytest.raises(ValueError) as e:
        core.validate_pattern(pattern)
    assert str(e.value) == reason


def test_valid_patterns_and_attributes():
    for p in (b"a.b", b"a.*", b"a.>", b"a.*.c", b"a.*.>", b"_bus_.x", b"a.caf\xc3\xa9", b"a.b$",
              b"a.%", b"a.#", b"a.\xf0\x9f\x98\x80.>"):
        core.validate_pattern(p)
    p = core.Pattern(b"orders.>")
    assert (p.pattern, p.namespace, p.matches_all, p.is_literal) == (b"orders.>", b"orders",
                                                                    True, False)
    p = core.Pattern(b"orders.eu.created")
    assert (p.namespace, p.matches_all, p.is_literal) == (b"orders", False, True)
    p = core.Pattern(b"orders.*")
    assert (p.matches_all, p.is_literal) == (False, False)


@FAST
@given(subjectish)
def test_validate_subject_matches_oracle(s):
    assert outcome(core.validate_subject, s) == outcome(oracle.validate_subject, s)


@FAST
@given(subjectish)
def test_validate_pattern_matches_oracle(s):
    assert outcome(core.validate_pattern, s) == outcome(oracle.validate_pattern, s)


@FAST
@given(subjectish, subjectish)
@example(b"a.>", b"a.")
@example(b"a.b.>", b"a.b")
@example(b"a.>", b"a")
@example(b"a.*", b"a.")
def test_match_matches_oracle(pattern, subject):
    """Same answer on any bytes (valid or not), through every fast path."""
    p, o = core.Pattern(pattern), oracle.Pattern(pattern)
    assert (p.pattern, p.namespace, p.matches_all, p.is_literal) == (
        o.pattern, o.namespace, o.matches_all, o.is_literal)
    assert p.matches(subject) == oracle.match_subject(pattern, subject)


valid_tok = st.sampled_from([b"a", b"b", b"c", b"ns", b"x-y", b"b$", b"caf\xc3\xa9", b"%"])


@FAST
@given(st.lists(valid_tok, min_size=2, max_size=5), st.data())
def test_match_valid_pairs(subject_toks, data):
    """Patterns derived from the subject itself (so matches happen often)."""
    subject = b".".join(subject_toks)
    pt = [data.draw(st.sampled_from([t, b"*", b"z"])) for t in subject_toks[1:]]
    if data.draw(st.booleans()):
        pt = pt[:data.draw(st.integers(0, len(pt)))] + [b">"]
    pattern = b".".join([subject_toks[0]] + pt)
    if pattern.count(b".") < 1:
        return
    core.validate_pattern(pattern)
    assert core.Pattern(pattern).matches(subject) == oracle.match_subject(pattern, subject)


# --------------------------------------------------------------------------- JSON scan

def go_bodies():
    wire = json.loads(WIRE.read_text())
    return [w["data"].encode("latin-1").split(b"\r\n\r\n", 1)[1] for w in wire
            if w["dir"] == "client->server" and w["data"].startswith("POST")]


def test_go_sdk_bodies():
    bodies = go_bodies()
    assert len(bodies) == 7
    for body in bodies:
        assert_same_scan(body)
    is_batch, (ev,) = core.scan_body(bodies[0])
    assert not is_batch
    assert (ev.subject, ev.id, ev.created_at, ev.payload) == (
        b"app.users.created", b"", b"0001-01-01T00:00:00Z", b'{"user_id":"123"}')
    assert (ev.trace_id, ev.key, ev.key_value, ev.response_subject) == (b"", b"", b"", b"")
    _, (ev,) = core.scan_body(bodies[1])
    assert (ev.trace_id, ev.key, ev.key_value, ev.payload) == (
        b'"req-1"', b'"k-1"', b"k-1", b'"plain text"')
    is_batch, evs = core.scan_body(bodies[2])
    assert is_batch and [e.payload for e in evs] == [b'{"n":1}', b'{"n":2}']
    assert all(e.key == b"" and e.subject == b"app.b" for e in evs)
    _, (ev,) = core.scan_body(bodies[3])
    assert ev.response_subject == b"_bus_.dc4oe6hksdudhifbp3ug"
    _, (ev,) = core.scan_body(bodies[6])
    assert ev.payload is None
    rec = core.make_record(ev, b"e_dc4oe69ksdudh7j1p58g", b"2026-11-27T13:35:22.472959607Z")
    assert rec == (b'{"id":"e_dc4oe69ksdudh7j1p58g","subject":"_bus_.dc4oe6hksdudhifbp3v0",'
                   b'"created_at":"2026-11-27T13:35:22.472959607Z"}')


def test_go_sse_frame_bytes():
    """Our framing of a record reproduces the Go server's chunk byte for byte."""
    rec = (b'{"id":"e_dc4oe6hksdudh7j1p570","subject":"_bus_.dc4oe6hksdudhifbp3ug",'
           b'"created_at":"2026-11-27T13:35:22.47129032Z","payload":{"result":30}}')
    want = (b'b9\r\nid: e_dc4oe6hksdudh7j1p570\nevent: msg\ndata: {"id":"e_dc4oe6hksdudh7j1p570",'
            b'"subject":"_bus_.dc4oe6hksdudhifbp3ug","created_at":"2026-11-27T13:35:22.47129032Z",'
            b'"payload":{"result":30}}\n\n\r\n')
    assert core.sse_frame([rec]) == want
    assert core.sse_frame_matching([rec], core.Pattern(b"_bus_.dc4oe6hksdudhifbp3ug")) == (want, 1)


@pytest.mark.parametrize("body,reason", [
    (b'{"subject" "a.b"}', "invalid JSON at byte 11: expected ':'"),
    (b'{"subject":"a.b",}', "invalid JSON at byte 17: expected a string key"),
    (b'{"subject":"a.b","payload":01}', "invalid JSON at byte 28: expected ',' or '}'"),
    (b'{"subject":"a.b"} x', "invalid JSON at byte 18: unexpected data after the JSON value"),
    (b'{"subject":"a\x01"}', "invalid JSON at byte 13: control character in string"),
    (b'{"subject":"a\xff"}', "invalid JSON at byte 13: invalid UTF-8 in string"),
    (b'   ', "empty body"),
    (b'', "empty body"),
    (b'[]', "empty batch"),
    (b' [ ] ', "empty batch"),
    (b'"x"', "body must be a JSON object or an array of objects"),
    (b'[{"subject":"a.b"},1]', "batch item 1 must be a JSON object"),
    (b'{"payload":1}', "missing subject"),
    (b'{"subject":""}', "missing subject"),
    (b'{"subject":null}', "missing subject"),
    (b'[{"subject":"a.b"},{"subject":"a.c","key":1}]', "batch item 1: field key must be a string"),
    (b'{"subject":5}', "field subject must be a string"),
    (b'{"subject":"a.b","trace_id":[]}', "field trace_id must be a string"),
    (b'{"subject":"a.b","created_at":true}', "field created_at must be a string"),
    (b'{"subject":5,"x":nul}', "invalid JSON at byte 17: invalid literal"),
])
def test_scan_errors(body, reason):
    with pytest.raises(ValueError) as e:
        core.scan_body(body)
    assert str(e.value) == reason
    assert_same_scan(body)


BAD_JSON = [
    b'{"subject":"a.b","payload":NaN}', b'{"subject":"a.b","payload":Infinity}',
    b'{"subject":"a.b","payload":-Infinity}', b'{"subject":"a.b","payload":1.}',
    b'{"subject":"a.b","payload":.5}', b'{"subject":"a.b","payload":-}',
    b'{"subject":"a.b","payload":+1}', b'{"subject":"a.b","payload":1e}',
    b'{"subject":"a.b","payload":1e+}', b'{"subject":"a.b","payload":-01}',
    b'{"subject":"a.b","payload":tru}', b'{"subject":"a.b","payload":[1,]}',
    b'{"subject":"a.b","payload":[,1]}', b"{'subject':'a.b'}", b'{"subject":"a.b"/**/}',
    b'\xef\xbb\xbf{"subject":"a.b"}', b'{"subject":"a.b","payload":"\\x41"}',
    b'{"subject":"a.b","payload":"\\u12g4"}', b'{"subject":"a.b","payload":"\\ud800\\u12g4"}',
    b'{"subject":"a.b","payload":"\xed\xa0\x80"}',
    b'{"subject":"a.b","payload":"\xc0\xaf"}', b'{"subject":"a.b","payload":"\xf4\x90\x80\x80"}',
    b'{"subject":"a.b","payload":"\t"}', b'{"subject":"a.b"', b'[{"subject":"a.b"}',
    b'{"subject":"a.b"}}', b'{"subject":"a.b",\x0c"x":1}', b'{"subject":"a.b"}\x00',
    b'{"subject":"a.b","payload":\xc2\xa01}', b'[{"subject":"a.b"},]', b'{"subject":"a.b" ,, }',
    b'{"subject":"a.b","payload":{"a" 1}}', b'{"subject":"a.b","payload":{1:1}}',
    b'{"subject":"a.b","payload":"abc}', b'{"subject":"a.b","payload":"\\',
]


@pytest.mark.parametrize("body", BAD_JSON)
def test_bad_json_rejected(body):
    with pytest.raises(ValueError, match=r"^invalid JSON at byte \d+: "):
        core.scan_body(body)
    assert assert_same_scan(body) == ("syntax",)


# Faults a renderer may inject; private-use chars stand for raw bytes that are not UTF-8.
BAD_BYTES = {"\ue000": b"\xff", "\ue001": b"\xc0\xaf", "\ue002": b"\xed\xa0\x80",
             "\ue003": b"\xf0\x9f\x98", "\ue004": b"\x80", "\ue005": b"\xf4\x90\x80\x80",
             "\ue006": b"\xe0\x80\x80"}
STRING_FAULTS = ["\x01", "\x1f", "\\x41", "\\u12g4", "\\ud800\\u12g4", "\\", "\\U0041",
                 "\\'"] + list(BAD_BYTES)
SCALAR_FAULTS = ["01", "-01", "1.", ".5", "-", "+1", "1e", "1e+", "1.e5", "NaN", "Infinity",
                 "-Infinity", "tru", "nul", "True", "None", "0x10", "'x'", "1_000", "--1", "\ue000"]


BAD_VALUES = [
    b'{"a":1,}', b'{,"a":1}', b'{"a":1,,"b":2}', b'{"a" 1}', b'{"a":1 "b":2}', b'{a:1}',
    b"{'a':1}", b'{1:1}', b'{"a":1', b'{"a":1}}', b'{"a"}', b'{"a":}', b'[1,]', b'[,1]',
    b'[1,,2]', b'[1 2]', b'[1', b'[1]]', b'[}', b'01', b'-01', b'00', b'1.', b'.5', b'-', b'+1',
    b'1e', b'1e+', b'1.e5', b'0x10', b'NaN', b'Infinity', b'-Infinity', b'tru', b'nul', b'nulll',
    b'True', b'None', b'"\x01"', b'"\t"', b'"\\x41"', b'"\\u12g4"', b'"\\u12"', b'"\\ud800\\u12"',
    b'"\\U0041"', b'"abc', b'"\\"',
] + [b'"a' + raw + b'"' for raw in BAD_BYTES.values()]
CONTEXTS = [
    b'{"subject":"a.b","payload":%s}', b'{"subject":"a.b","x":%s}',
    b'{"subject":"a.b","payload":[%s]}', b'{"subject":"a.b","payload":[1,%s,2]}',
    b'{"subject":"a.b","payload":{"k":%s}}', b'{"subject":"a.b","payload":{"k":[{"k":%s}]}}',
    b'[{"subject":"a.b","payload":%s}]', b'[{"subject":"a.b"},%s]', b'[%s]', b'%s',
    b'{"subject":%s}', b'{"key":%s,"subject":"a.b"}', b'{"trace_id":%s,"subject":"a.b"}',
    b'[{"subject":"a.b"},{"subject":"a.b","id":%s}]',
]


def test_bad_values_in_every_context():
    """Every grammar fault is refused wherever it sits (top level, batch, payload, nested)."""
    for ctx in CONTEXTS:
        for bad in BAD_VALUES:
            body = ctx % bad
            with pytest.raises(ValueError, match=r"^invalid JSON at byte \d+: ") as e:
                core.scan_body(body)
            assert assert_same_scan(body) == ("syntax",), (body, str(e.value))


EVENT_LEVEL_FAULTS = [
    b'{"subject":"a.b",}', b'{,"subject":"a.b"}', b'{"subject":"a.b",,"x":1}',
    b'{"subject" "a.b"}', b'{"subject":"a.b" "x":1}', b'{subject:"a.b"}', b'{"subject":"a.b"',
    b'[{"subject":"a.b"},]', b'[,{"subject":"a.b"}]', b'[{"subject":"a.b"} {"subject":"a.b"}]',
    b'[{"subject":"a.b"}', b'[{"subject":"a.b"}]]', b'{"subject":"a.b"}}', b'{"subject":"a.b"]',
    b'[{"subject":"a.b"}}', b'{"subject":"a.b",1:2}',
]


@pytest.mark.parametrize("body", EVENT_LEVEL_FAULTS)
def test_event_level_faults(body):
    with pytest.raises(ValueError, match=r"^invalid JSON at byte \d+: "):
        core.scan_body(body)
    assert assert_same_scan(body) == ("syntax",)


GOOD_JSON = [
    b' \r\n\t{"subject":"a.b"} \n',
    b'{"subject":"a.b","payload":-0.0e-0}',
    b'{"subject":"a.b","payload":1E+400}',
    b'{"subject":"a.b","payload":' + b"9" * 5000 + b"}",
    b'{"subject":"a.b","payload":"\\ud83d\\ude00 \\u00e9 \xf0\x9f\x98\x80 \\/\\b\\f\\n\\r\\t"}',
    b'{"subject":"a.b","payload":null}',
    b'{"subject":"a.b","payload":{"subject":5,"key":[]}}',
    b'{"subject":"a.b","trace_id":null,"key":"","id":null}',
    b'{"subject":"a.b","key":"k1","key":"k2","payload":1,"payload":[2]}',
    b'{"subject":"x.y","subject":"a.b"}',
    b'{"subject":"a.b","subject":null,"subject":"c.d"}',
    b'{"sub\\u006aect":"a.b","payload" : { } }',
    b'{"subject":"a\\u002eb","key":"k\\"1\\u0000","trace_id":"\\u00e9"}',
    b'[{"subject":"a.b","index":0},{"subject":"a.c","index":{"deep":[true,false,null]}}]',
    b'{"subject":"a.b","payload":[\n1,\n2\r\n]}',
]


@pytest.mark.parametrize("body", GOOD_JSON)
def test_good_json_accepted(body):
    got = assert_same_scan(body)
    assert got[0] == "ok"


# Lone surrogates are valid JSON text (RFC 8259 §7, §8.2) and Bus stores them: so does busd.
LONE_SURROGATES = [
    b'{"subject":"a.b","payload":"\\ud800"}', b'{"subject":"a.b","payload":"\\udc00"}',
    b'{"subject":"a.b","payload":"\\ud800\\u0041"}', b'{"subject":"a.b","payload":["\\ud800\\ud800"]}',
    b'{"subject":"a.b","key":"\\udfff\\ud83d","trace_id":"\\uDBFF"}',
    b'{"subject":"a.\\ud800"}', b'{"subject":"a.b","payload":{"\\ud800":1}}',
]


@pytest.mark.parametrize("body", LONE_SURROGATES)
def test_lone_surrogate_escapes_are_json(body):
    """Accepted as the grammar allows, raw tokens kept as sent, decoded fields as WTF-8."""
    assert assert_same_scan(body)[0] == "ok"
    _, (ev,) = core.scan_body(body)
    if ev.payload is not None:
        assert ev.payload in body


def test_a_lone_surrogate_subject_is_refused_as_not_utf8():
    _, events = core.scan_body(b'{"subject":"a.\\ud800"}')
    assert events[0].subject == b"a.\xed\xa0\x80"
    with pytest.raises(ValueError, match="subject is not valid UTF-8"):
        core.stamp_events(events, False)


@pytest.mark.parametrize("field", ["key", "trace_id"])
def test_a_batch_item_with_a_long_field_is_named(field):
    """Item 1's 257-byte field is the fault reported, though item 2's subject is bad too."""
    name, long, longest = (field.encode(), json.dumps("k" * 257).encode(),
                           json.dumps("k" * 256).encode())
    body = b'[{"subject":"a.b"},{"subject":"a.b","%s":%s},{"subject":"a..b"}]' % (name, long)
    _, events = core.scan_body(body)
    want = f"batch item 1: field {field} is longer than 256 bytes"
    with pytest.raises(ValueError, match=want):
        core.stamp_events(events, True)
    assert outcome(oracle.stamp_events, events, True, lambda: b"e_" + core.new_xid(),
                   core.now_rfc3339) == ("err", want)
    _, events = core.scan_body(b'{"subject":"a.b","%s":%s}' % (name, longest))
    assert core.stamp_events(events, False)[3][0].count(b"k" * 256) == 1  # 256 bytes: taken


def test_one_publish_is_stamped_at_one_time():
    """The clock is read once per publish: its events share their created_at, and their
    ids (made at the same second) still sort in order."""
    _, events = core.scan_body(b'[' + b",".join([b'{"subject":"a.b"}'] * 50) + b"]")
    _, ids, stamps, _, _ = core.stamp_events(events, True)
    assert len(set(stamps)) == 1 and ids == sorted(ids) and len(set(ids)) == 50
    assert core.parse_rfc3339(stamps[0]) // 10**9 == core.xid_time(ids[0][2:])


@given(st.lists(st.binary(max_size=300), max_size=50))
def test_records_size_is_the_sum_of_their_lengths(records):
    assert core.records_size(records) == sum(map(len, records))


def test_records_size_takes_only_bytes():
    for bad in ([b"x", "y"], [bytearray(b"x")], [None]):
        with pytest.raises(TypeError):
            core.records_size(bad)


@FAST
@given(st.binary(max_size=200), st.lists(st.binary(max_size=40), min_size=1, max_size=30),
       st.binary(max_size=40), st.integers(-1, 2**63 - 1), st.booleans(), st.booleans())
def test_the_answer_to_a_publish_is_the_oracles(head, ids, created_at, first_index, is_batch,
                                                close):
    args = (head, ids, [created_at], first_index, is_batch, close)
    assert core.published_response(*args) == oracle.published_response(*args)


def test_the_answer_to_a_publish_refuses_what_it_cannot_answer():
    with pytest.raises(ValueError):
        core.published_response(b"", [], [], 0, True, False)
    with pytest.raises(ValueError):
        core.published_response(b"", [b"id"], [], 0, False, False)
    with pytest.raises(TypeError):
        core.published_response(b"", [b"id", "id"], [b"t"], 0, True, False)


def test_last_duplicate_wins_and_raw_tokens():
    _, (ev,) = core.scan_body(GOOD_JSON[8])
    assert (ev.key, ev.key_value, ev.payload) == (b'"k2"', b"k2", b"[2]")
    _, (ev,) = core.scan_body(GOOD_JSON[10])
    assert ev.subject == b"c.d"
    _, (ev,) = core.scan_body(GOOD_JSON[12])
    assert ev.subject == b"a.b"
    assert ev.key == b'"k\\"1\\u0000"' and ev.key_value == b'k"1\x00'
    assert ev.trace_id == b'"\\u00e9"'
    rec = core.make_record(ev, b"e_" + core.new_xid(), b"2026-01-01T00:00:00Z")
    assert json.loads(rec)["key"] == 'k"1\x00'
    assert json.loads(rec)["trace_id"] == "\u00e9"


def test_payload_line_breaks_do_not_break_the_record_line():
    _, (ev,) = core.scan_body(GOOD_JSON[-1])
    assert ev.payload == b"[\n1,\n2\r\n]"
    rec = core.make_record(ev, b"e_" + core.new_xid(), b"2026-01-01T00:00:00Z")
    assert b"\n" not in rec and b"\r" not in rec
    assert json.loads(rec)["payload"] == [1, 2]


def nested(depth):
    """An event whose deepest container is at the given nesting depth (event object = 1)."""
    k = depth - 1
    return b'{"subject":"a.b","payload":' + b"[" * k + b"]" * k + b"}"


def test_depth_limit():
    assert assert_same_scan(nested(512))[0] == "ok"
    with pytest.raises(ValueError, match="^invalid JSON at byte 538: nesting deeper than 512$"):
        core.scan_body(nested(513))
    assert assert_same_scan(nested(513)) == ("syntax",)
    assert assert_same_scan(b"[" + nested(511) + b"]")[0] == "ok"
    assert assert_same_scan(b"[" + nested(512) + b"]") == ("syntax",)
    with pytest.raises(ValueError, match="nesting deeper than 512"):
        core.scan_body(b"[" * 100000)


# JSON documents rendered with random whitespace and escapes.

WS = st.sampled_from(["", "", " ", "\n", "\t", "\r\n  ", "   "])
json_scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(st.characters()
                          | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF,
                                          exclude_categories=()), max_size=8))  # lone surrogates too
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4)
    | st.lists(st.tuples(st.text(max_size=4), kids), max_size=4).map(oracle._Obj),
    max_leaves=10)

SHORT_ESC = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n",
             "\r": "\\r", "\t": "\\t"}



class Renderer:
    """Serialise a JSON value with random whitespace and escapes, sometimes with a fault."""

    def __init__(self, draw, fault_at=-1):
        self.draw = draw
        self.fault_at = fault_at  # inject one fault at the fault_at-th opportunity (-1: none)
        self.seen = 0

    def fault(self):
        self.seen += 1
        return self.seen - 1 == self.fault_at

    def ws(self):
        return self.draw(WS)

    def string(self, s):
        draw = self.draw
        out = ['"']
        for ch in s:
            cp = ord(ch)
            must = ch in '"\\' or cp < 0x20 or 0xD800 <= cp <= 0xDFFF  # surrogates: escaped
            how = draw(st.sampled_from(["raw", "raw", "u", "U", "short"]))
            if how == "raw" and not must:
                out.append(ch)
            elif how == "short" and ch in SHORT_ESC:
                out.append(SHORT_ESC[ch])
            elif cp >= 0x10000:
                hi, lo = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
                out.append(("\\u%04x\\u%04x" if how != "U" else "\\u%04X\\u%04X") % (hi, lo))
            else:
                out.append(("\\u%04x" if how != "U" else "\\u%04X") % cp)
        if self.fault():
            out.insert(draw(st.integers(1, len(out))), draw(st.sampled_from(STRING_FAULTS)))
        if not self.fault():
            out.append('"')
        return "".join(out)

    def value(self, v):
        draw, ws = self.draw, self.ws
        if self.seen and self.fault():  # (not at the root: that would replace everything)
            return draw(st.sampled_from(SCALAR_FAULTS))
        if v is None:
            return "null"
        if v is True or v is False:
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return draw(st.sampled_from([repr(v), "%e" % v, "%E" % v, json.dumps(v)]))
        if isinstance(v, str):
            return self.string(v)
        if isinstance(v, oracle._Obj):
            items = [ws() + self.member(k, x) + ws() for k, x in v]
            opener, closer = "{", "}"
        else:
            items = [ws() + self.value(x) + ws() for x in v]
            opener, closer = "[", "]"
        seps = [","] * max(len(items) - 1, 0)
        if self.fault():
            kind = draw(st.sampled_from(["trailing", "leading", "missing", "double", "unclosed",
                                         "extra", "swap"]))
            if kind == "trailing":
                items.append("")
                seps.append(",")
            elif kind == "leading":
                items.insert(0, "")
                seps.insert(0, ",")
            elif kind == "missing" and seps:
                seps[0] = " "
            elif kind == "double" and seps:
                seps[0] = ",,"
            elif kind == "unclosed":
                closer = ""
            elif kind == "extra":
                closer += closer
            else:
                opener, closer = closer, opener
        inner = "".join(item + sep for item, sep in zip(items, seps + [""]))
        return opener + (inner or ws()) + closer

    def member(self, k, x):
        key = self.string(k)
        colon = ":"
        if self.fault():
            fault = self.draw(st.sampled_from(["nocolon", "unquoted", "single", "number"]))
            if fault == "nocolon":
                colon = " "
            elif fault == "unquoted":
                key = k.strip('"') or "k"
            elif fault == "single":
                key = "'" + k + "'"
            else:
                key = "1"
        return key + self.ws() + colon + self.ws() + self.value(x)

    def document(self, doc):
        text = self.ws() + self.value(doc) + self.ws()
        data = text.encode("utf-8", "surrogatepass")
        for ch, raw in BAD_BYTES.items():
            data = data.replace(ch.encode(), raw)
        return data


subject_text = st.sampled_from(["a.b", "orders.created", "app.users.created", "_bus_.x", "a",
                                "a.*", "x.y-z_1", "é.b"])


def mostly(usual, rare, twentieths=18):
    """usual with probability twentieths/20, else rare."""
    return st.integers(0, 19).flatmap(lambda i: usual if i < twentieths else rare)


string_value = st.one_of(st.text(max_size=6), st.just(""), st.none())


@st.composite
def event_pairs(draw):
    pairs = []
    keys = draw(st.lists(st.sampled_from(
        ["subject", "id", "created_at", "response_subject", "trace_id", "key",
         "payload", "payload", "index", "Subject", "x"]), max_size=8))
    if draw(st.integers(0, 19)) > 0:
        keys.insert(draw(st.integers(0, len(keys))), "subject")
    for k in keys:
        if k == "subject":
            v = draw(mostly(subject_text, string_value | json_scalars, 19))
        elif k == "created_at":
            v = draw(mostly(st.just("0001-01-01T00:00:00Z") | string_value, json_values, 19))
        elif k in oracle.STRING_FIELDS:
            v = draw(mostly(string_value, json_values, 19))
        else:
            v = draw(json_values)
        pairs.append((k, v))
    return oracle._Obj(pairs)


def documents(draw):
    shape = draw(st.sampled_from(["single"] * 5 + ["batch"] * 4 + ["odd"]))
    if shape == "single":
        return draw(event_pairs())
    if shape == "batch":
        return draw(st.lists(event_pairs(), min_size=1, max_size=4))
    return draw(st.one_of(json_values, st.lists(st.one_of(event_pairs(), json_values),
                                                max_size=3)))


@st.composite
def bodies(draw):
    """Valid JSON bodies (mostly well-shaped events)."""
    return Renderer(draw).document(documents(draw))


@st.composite
def faulty_bodies(draw):
    """Bodies with one grammar fault injected somewhere."""
    return Renderer(draw, fault_at=draw(st.integers(0, 30))).document(documents(draw))


@SLOW
@given(bodies())
def test_scan_matches_oracle(body):
    got = assert_same_scan(body)
    if got[0] == "ok":
        for ev in core.scan_body(body)[1]:
            rec = core.make_record(ev, b"e_" + core.new_xid(), core.now_rfc3339())
            assert rec == oracle.make_record(ev, rec[7:29], json.loads(rec)["created_at"].encode())
            parsed = json.loads(rec)
            assert parsed["subject"].encode() == ev.subject
            assert list(parsed)[:2] == ["id", "subject"]
            assert core.record_id(rec) == rec[7:29]
            if oracle.json_escape(ev.subject) == ev.subject:
                assert core.record_subject(rec) == ev.subject
            if ev.payload is not None:
                assert json.dumps(parsed["payload"]) == json.dumps(json.loads(ev.payload))


MUTANT_BYTES = b'{}[]",:\\ \n0123456789-+.eEtrufalsn\x00\x1f\x7f\x80\xbf\xc3\xe2\xed\xf0\xff'


@st.composite
def mutated(draw):
    body = bytearray(draw(bodies()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        i = draw(st.integers(0, max(len(body) - 1, 0)))
        c = draw(st.sampled_from(MUTANT_BYTES) | st.integers(0, 255))
        if op == "set" and body:
            body[i] = c
        elif op == "insert":
            body.insert(i, c)
        elif body:
            del body[i]
    return bytes(body)


@SLOW
@given(mutated())
def test_scan_mutations_match_oracle(body):
    assert_same_scan(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faulty_bodies())
def test_scan_faulty_bodies_match_oracle(body):
    assert_same_scan(body)


@FAST
@given(st.binary(max_size=40))
def test_scan_random_bytes_match_oracle(body):
    assert_same_scan(body)


# What may end a string's plain run: the scan skips plain text eight bytes at a time
# (_word_special), so every byte value, and the escapes and UTF-8 sequences, must be seen
# at every offset of a word, after every run length.
RUN_ENDERS = [bytes([v]) for v in range(256)] + [
    b'\\"', b"\\u00e9", b"\\x", b"\xc3\xa9", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80"]


@pytest.mark.parametrize("ender", RUN_ENDERS)
def test_scan_string_runs_end_at_every_offset(ender):
    for before in range(0, 18):
        for after in (0, 1, 7, 8, 9):
            text = b"a" * before + ender + b"b" * after
            assert_same_scan(b'{"subject":"a.b","payload":"' + text + b'"}')
            assert_same_scan(b'{"subject":"a.b","payload":"' + text)  # unterminated
            assert_same_scan(b'{"subject":"a.b","trace_id":"' + text + b'"}')


# --------------------------------------------------------------------------- records and SSE

@st.composite
def records(draw):
    subject = draw(st.sampled_from([b"a.b", b"a.b.c", b"orders.eu.created", b"x.y"]))
    ev = oracle.Event(subject=subject,
                      trace_id=draw(st.sampled_from([b"", b'"t-1"'])),
                      key=draw(st.sampled_from([b"", b'"k"'])),
                      response_subject=draw(st.sampled_from([b"", b"_bus_.abc"])),
                      payload=draw(st.sampled_from([None, b"null", b'{"n":1}', b'"\xc3\xa9"'])))
    body = json.dumps({k: json.loads(v) if k in ("trace_id", "key") else v.decode()
                       for k, v in (("subject", ev.subject), ("trace_id", ev.trace_id),
                                    ("key", ev.key), ("response_subject", ev.response_subject))
                       if v}).encode()
    if ev.payload is not None:
        body = body[:-1] + b',"payload":' + ev.payload + b"}"
    (cev,) = core.scan_body(body)[1]
    eid = draw(st.sampled_from([b"e_" + oracle.xid_encode(draw(st.binary(min_size=12,
                                                                           max_size=12))),
                                b"order-123", b"x", "caf\u00e9 1".encode(), b"z" * 128]))
    created = draw(st.sampled_from([b"2026-11-27T13:35:22.47129032Z", b""]))
    rec = core.make_record(cev, eid, created)
    assert rec == oracle.make_record(ev, eid, created)
    return rec


@FAST
@given(st.lists(records(), max_size=8), st.integers(-2, 10), st.integers(-2, 10))
def test_sse_frame_matches_oracle(recs, start, end):
    assert core.sse_frame(recs, start, end) == oracle.sse_frame(recs, start, end)
    assert core.sse_frame(recs) == oracle.sse_frame(recs)


@FAST
@given(st.lists(records(), max_size=8),
       st.sampled_from([b"a.b", b"a.*", b"a.>", b"a.*.c", b"orders.>", b"*.b", b"x.y", b"q.>"]))
def test_sse_frame_matching_matches_oracle(recs, pattern):
    assert core.sse_frame_matching(recs, core.Pattern(pattern)) == \
        oracle.sse_frame_matching(recs, pattern)


@FAST
@given(st.lists(records(), max_size=8),
       st.sampled_from([b"a.b", b"a.*", b"a.>", b"a.*.c", b"orders.>", b"*.b", b"x.y", b"q.>"]),
       st.integers(-2, 10), st.integers(-2, 10))
def test_first_matching_matches_oracle(recs, pattern, start, end):
    assert core.first_matching(recs, core.Pattern(pattern), start, end) == \
        oracle.first_matching(recs, pattern, start, end)
    assert core.first_matching(recs, core.Pattern(pattern)) == \
        oracle.first_matching(recs, pattern)


A_PATTERNS = [b"a.b", b"a.*", b"a.>", b"a.*.c", b"a.b.c", b"a.x"]


@FAST
@given(st.lists(records(), max_size=8), st.lists(st.sampled_from(A_PATTERNS), min_size=1,
                                                 max_size=4),
       st.integers(-2, 10), st.integers(-2, 10))
def test_several_patterns_select_what_any_of_them_matches_once(recs, patterns, start, end):
    """A filter of several patterns (several subject=) against the oracle: a record that
    matches two of them is selected once, in record order."""
    p, o = core.Pattern(*patterns), oracle.Pattern(*patterns)
    assert (p.patterns, p.pattern, p.namespace, p.matches_all, p.is_literal) == (
        o.patterns, o.pattern, o.namespace, o.matches_all, o.is_literal)
    assert core.sse_frame_matching(recs, p) == oracle.sse_frame_matching(recs, o)
    assert core.first_matching(recs, p, start, end) == oracle.first_matching(recs, o, start, end)
    for rec in recs:
        subject = oracle.record_subject(rec)
        assert p.matches(subject) == o.matches(subject)


def test_several_patterns_must_share_a_namespace():
    with pytest.raises(ValueError, match="share a namespace"):
        core.Pattern(b"a.b", b"b.>")
    assert core.Pattern(b"a.x", b"a.*", b"a.x").patterns == (b"a.*", b"a.x")


@FAST
@given(st.binary(max_size=300))
def test_sse_chunk_matches_oracle(text):
    assert core.sse_chunk(text) == oracle.sse_chunk(text)


@pytest.mark.parametrize(("clock", "python_clock"), [(core.monotonic, time.monotonic),
                                                     (core.wall_clock, time.time)])
def test_the_c_clocks_are_pythons(clock, python_clock):
    """The same clocks as time.monotonic() and time.time(), read from C: never outside two
    readings of Python's."""
    for _ in range(1000):
        before = python_clock()
        now = clock()
        assert before <= now <= python_clock()


HEADER_SPELLINGS = [b"Host", b"content-length", b"Content-Type", b"CONTENT-TYPE",
                    b"Last-Event-ID", b"Last-Event-Id", b"If-None-Match", b"X-Bus-Event-Id",
                    b"Hos", b"Hostx", b"\xc4ost", b"H\x00st", b"", b"A" * 24, b"A" * 25]


@FAST
@given(st.one_of(st.sampled_from(HEADER_SPELLINGS), st.binary(max_size=40),
                 st.text("aAzZ-_@[`{", max_size=26).map(str.encode)))
def test_header_name_matches_oracle(raw):
    assert core.header_name(raw) == oracle.header_name(raw)


def test_header_names_busd_reads_are_shared_objects():
    """The names the connection and API look up come back as one object each, whatever
    the spelling: no allocation, and the hash is already known."""
    for name in (b"host", b"content-length", b"transfer-encoding", b"expect", b"origin",
                 b"authorization", b"last-event-id", b"if-none-match"):
        assert core.header_name(name.upper()) is core.header_name(name.title()), name
        assert core.header_name(name) == name


def test_sse_frame_edge_cases():
    assert core.sse_frame([]) == b""
    assert core.sse_frame_matching([], core.Pattern(b"a.>")) == (b"", 0)
    with pytest.raises(TypeError):
        core.sse_frame(["not bytes" * 10])
    with pytest.raises(ValueError):
        core.sse_frame([b"short"])
    with pytest.raises(ValueError):
        core.sse_frame([b'{"id":"' + b"x" * 200])
    (ev,) = core.scan_body(b'{"subject":"a.b"}')[1]
    for bad in (b"", b'a"b', b"x" * 129):
        with pytest.raises(ValueError):
            core.make_record(ev, bad, b"")


# --------------------------------------------------------------------------- xid

def test_xid_shape_and_time():
    ids = [core.new_xid() for _ in range(1000)]
    assert len(set(ids)) == 1000
    now = time.time()
    for x in ids[:10]:
        assert len(x) == 20 and re.fullmatch(rb"[0-9a-v]{19}[0g]", x)
        assert core.is_xid(x) and oracle.is_xid(x)
        assert abs(core.xid_time(x) - now) < 5
        assert core.xid_time(x) == oracle.xid_time(x)
    raws = [oracle.xid_decode(x) for x in ids]
    counters = [int.from_bytes(r[9:], "big") for r in raws]
    assert all((b - a) % (1 << 24) == 1 for a, b in zip(counters, counters[1:]))
    assert len({r[4:9] for r in raws}) == 1
    assert int.from_bytes(raws[0][7:9], "big") == os.getpid() & 0xFFFF
    assert ids == sorted(ids) or counters[-1] < counters[0]  # k-sorted unless the counter wrapped


def test_xid_known_value_from_go():
    # e_dc4oe69ksdudh7j1p53g was created by the Go server at 2026-11-27T13:35:21Z.
    assert core.xid_time(b"dc4oe69ksdudh7j1p53g") == oracle.parse_rfc3339(
        b"2026-11-27T13:35:21Z") // 10**9
    assert core._xid_encode_raw(oracle.xid_decode(b"dc4oe69ksdudh7j1p53g")) == b"dc4oe69ksdudh7j1p53g"


def test_xid_after_fork_uses_child_pid():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(w, core.new_xid())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 20)
    os.close(r)
    os.close(w)
    assert int.from_bytes(oracle.xid_decode(child)[7:9], "big") == pid & 0xFFFF


@FAST
@given(st.binary(min_size=12, max_size=12))
def test_xid_encode_matches_reference(raw):
    x = core._xid_encode_raw(raw)
    assert x == oracle.xid_encode(raw)
    assert core.is_xid(x)
    assert core.xid_time(x) == int.from_bytes(raw[:4], "big")


@FAST
@given(st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyzV-", min_size=18, max_size=21)
       .map(str.encode) | st.binary(max_size=21))
@example(b"dc4oe69ksdudh7j1p53h")
@example(b"vvvvvvvvvvvvvvvvvvvg")
def test_is_xid_matches_oracle(s):
    assert core.is_xid(s) == oracle.is_xid(s)
    assert outcome(core.xid_time, s)[0] == outcome(oracle.xid_time, s)[0]
    if core.is_xid(s):
        assert core.xid_time(s) == oracle.xid_time(s)


# --------------------------------------------------------------------------- RFC 3339

def test_now_rfc3339():
    a = time.time_ns()
    s = core.now_rfc3339()
    b = time.time_ns()
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z", s), s
    assert a - 1000 <= core.parse_rfc3339(s) <= b + 1000
    assert core.format_rfc3339(core.parse_rfc3339(s)) == s


@pytest.mark.parametrize("s,ns", [
    (b"1970-01-01T00:00:00Z", 0),
    (b"2026-11-27T13:35:21.96607724Z", 1795786521966077240),
    (b"0001-01-01T00:00:00Z", -62135596800 * 10**9),
    (b"1969-12-31T23:59:59.999999999Z", -1),
    (b"2026-11-27T15:35:21+02:00", 1795786521 * 10**9),
    (b"2026-11-27T11:05:21.5-02:30", 1795786521 * 10**9 + 500_000_000),
    (b"2024-02-29T00:00:00Z", 1709164800 * 10**9),
])
def test_rfc3339_examples(s, ns):
    assert core.parse_rfc3339(s) == ns == oracle.parse_rfc3339(s)
    if s.endswith(b"Z"):
        assert core.format_rfc3339(ns) == s


@pytest.mark.parametrize("s", [
    b"", b"2026-11-27", b"2026-11-27 13:35:21Z", b"2026-11-27t13:35:21Z", b"2026-11-27T13:35:21z",
    b"2026-11-27T13:35:21", b"2026-11-27T13:35:21.Z", b"2026-11-27T13:35:21.1234567890Z",
    b"2026-13-27T13:35:21Z", b"2026-11-31T13:35:21Z", b"2025-02-29T00:00:00Z",
    b"2026-11-27T24:00:00Z", b"2026-11-27T13:60:00Z", b"2026-11-27T13:35:60Z",
    b"2026-11-27T13:35:21+0200", b"2026-11-27T13:35:21+24:00", b"2026-11-27T13:35:21+02:60",
    b"2026-11-27T13:35:21Zjunk", b"+2026-11-27T13:35:21Z", b"2026-1a-27T13:35:21Z",
])
def test_rfc3339_rejects(s):
    with pytest.raises(ValueError):
        core.parse_rfc3339(s)
    with pytest.raises(ValueError):
        oracle.parse_rfc3339(s)


LO, HI = -62167219200 * 10**9, 253402300799 * 10**9 + 999_999_999


@FAST
@given(st.integers(LO, HI) | st.integers(-10**12, 10**12) | st.sampled_from([LO, HI, 0]))
def test_rfc3339_roundtrip(ns):
    s = core.format_rfc3339(ns)
    assert s == oracle.format_rfc3339(ns)
    assert core.parse_rfc3339(s) == ns


def test_format_rfc3339_range():
    for ns in (LO - 1, HI + 1):
        with pytest.raises(ValueError):
            core.format_rfc3339(ns)


@st.composite
def timestamps(draw):
    """Mostly well-formed RFC 3339 times, with every field sometimes out of range."""
    def two(lo, hi):
        return b"%02d" % draw(mostly(st.integers(lo, hi), st.integers(0, 99), 19))
    y = b"%04d" % draw(st.integers(0, 9999))
    frac = draw(mostly(st.text("0123456789", min_size=1, max_size=9).map(lambda t: "." + t),
                       st.sampled_from(["", ".", ".1234567890"]), 15)).encode()
    tz = draw(mostly(st.just(b"Z"), st.sampled_from([b"z", b"", b"+0200", b"Z "]), 12))
    if tz == b"Z" and draw(st.booleans()):
        tz = draw(st.sampled_from([b"+", b"-"])) + two(0, 23) + b":" + two(0, 59)
    sep = draw(mostly(st.just(b"T"), st.sampled_from([b"t", b" "]), 19))
    return (y + b"-" + two(1, 12) + b"-" + two(1, 31) + sep + two(0, 23) + b":" + two(0, 59)
            + b":" + two(0, 59) + frac + tz)


@FAST
@given(timestamps())
def test_parse_rfc3339_matches_oracle(s):
    assert outcome(core.parse_rfc3339, s)[0] == outcome(oracle.parse_rfc3339, s)[0]
    if outcome(oracle.parse_rfc3339, s)[0] == "ok":
        assert core.parse_rfc3339(s) == oracle.parse_rfc3339(s)


# --------------------------------------------------------------------------- stamp_events

stamp_subjects = st.sampled_from([b"app.a", b"app.b.c", b"orders.x", b"_bus_.d4o7ehksdud4d8c68bg0",
                                  b"app", b"app.*", b"app..b", b"app.#"])
stamp_ids = st.sampled_from([b"", b"e_d4o7ehksdud4d8c68bg0", b"e_bad", b"c_d4o7ehksdud4d8c68bg0",
                             b"order-123", b" lead", b"tab\\tin", b"caf\xc3\xa9", b"x" * 129,
                             b"e_d4o7ehksdud4d8c68bg0x", b"a\\\"b"])
stamp_times = st.sampled_from([b"", b"0001-01-01T00:00:00Z", b"2026-11-27T13:20:58.365157351Z",
                               b"2026-11-27T15:20:58+02:00", b"yesterday"])
stamp_event = st.fixed_dictionaries({
    "subject": stamp_subjects, "id": stamp_ids, "created_at": stamp_times,
    "response_subject": st.sampled_from([b"", b"_bus_.d4o7ehksdud4d8c68bg0", b"a.*"]),
    "key": st.sampled_from([b"", b"k1", b"k\\u00e9"]),
    "payload": st.sampled_from([None, b"1", b'{"a": [1, 2]}']),
})


def _stamp_body(items, is_batch):
    def one(item):
        parts = [b'"subject":"%s"' % item["subject"]]
        for name in ("id", "created_at", "response_subject", "key"):
            if item[name]:
                parts.append(b'"%s":"%s"' % (name.encode(), item[name]))
        if item["payload"] is not None:
            parts.append(b'"payload":' + item["payload"])
        return b"{" + b",".join(parts) + b"}"
    objects = [one(item) for item in items]
    return b"[" + b",".join(objects) + b"]" if is_batch else objects[0]


def test_a_batch_of_changing_subjects_and_times_is_stamped_as_the_oracle_does():
    """stamp_events reuses what it worked out for the event before (the subject's checks
    and escaped size, the created_at's): every change of subject or time, of length too,
    in one batch. Random batches rarely get here whole (most draws hold a bad field)."""
    subjects = [b"app.a", b"app.b.c", b"app.b.c", b"app.long.subject.name", b"app.a"]
    times = [b"", b"2026-11-27T13:20:58.365157351Z", b"2026-11-27T13:20:58.365157351Z",
             b"0001-01-01T00:00:00Z", b"2026-11-27T15:20:58+02:00"]
    items = [{"subject": s, "id": b"", "created_at": t, "response_subject": b"", "key": b"",
              "payload": b"[%d]" % i} for i, (s, t) in enumerate(zip(subjects, times))]
    is_batch, events = core.scan_body(_stamp_body(items, True))
    namespace, ids, stamps, records, keyed = core.stamp_events(events, is_batch)
    fresh_ids, now = iter(ids), next(t for t, ev in zip(stamps, events) if not ev.created_at)
    want = oracle.stamp_events(events, is_batch, lambda: next(fresh_ids), lambda: now)
    assert want == (namespace, ids, stamps, records, keyed)
    assert [json.loads(r)["subject"] for r in records] == [s.decode() for s in subjects]


@FAST
@given(st.lists(stamp_event, min_size=1, max_size=4), st.booleans())
def test_stamp_events_matches_oracle(items, is_batch):
    body = _stamp_body(items if is_batch else items[:1], is_batch)
    scanned_batch, events = core.scan_body(body)
    got = outcome(core.stamp_events, events, scanned_batch)
    if got[0] == "ok":  # replay the assigned ids and times through the oracle
        namespace, ids, stamps, records, keyed = got[1]
        fresh_ids = iter([i for i, ev in zip(ids, events) if not ev.id])
        fresh_times = iter([t for t, ev in zip(stamps, events)
                            if ev.created_at in (b"", oracle.ZERO_TIME)])
        want = outcome(oracle.stamp_events, events, scanned_batch,
                       lambda: next(fresh_ids), lambda: next(fresh_times))
        assert want == got
        for event_id, ev in zip(ids, events):
            assert event_id == ev.id or event_id.startswith(b"e_") and core.is_xid(event_id[2:])
    else:
        want = outcome(oracle.stamp_events, events, scanned_batch,
                       lambda: b"e_" + core.new_xid(), core.now_rfc3339)
        assert want == got
