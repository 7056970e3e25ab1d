import pytest

from services.proxy.json_members import appended, members, without


def test_members_have_exact_spans_and_parsed_values():
    text = ' {"a": 1, "usage" :{"x":[1,2]} ,"c":"}"}\r'
    found = members(text)
    assert list(found) == ["a", "usage", "c"]
    usage = found["usage"]
    assert usage.value == {"x": [1, 2]}
    assert text[usage.start : usage.end] == '"usage" :{"x":[1,2]}'


@pytest.mark.parametrize(
    "text,name,left",
    [
        ('{"a":1,"usage":null}', "usage", '{"a":1}'),
        ('{"usage":null,"a":1}', "usage", '{"a":1}'),
        ('{"a": 1, "usage": null, "b": 2}', "usage", '{"a": 1, "b": 2}'),
        ('{"usage":null}', "usage", "{}"),
    ],
)
def test_without_removes_one_member_and_its_comma(text, name, left):
    assert without(text, members(text), name) == left


def test_refuses_what_is_not_one_object_with_distinct_names():
    for text in ('{"a":1,"a":2}', "[1]", '{"a":1} x', '{"a":1', "", '{"a" 1}', '{"a":1,}'):
        assert members(text) is None, text
    assert members('{"a":' + "[" * 100_000 + "]" * 100_000 + "}") is None


def test_appended_adds_members_at_the_end():
    assert appended('{"a":1}\r', ['"t":{"x":1}']) == '{"a":1,"t":{"x":1}}\r'
