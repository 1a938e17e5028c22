"""The scanners that bound a request's grammar before llama.cpp parses it."""
from __future__ import annotations

import pytest

from edge_runtime.engine.grammar import MAX_DEPTH, check_gbnf, gbnf_depth, pattern_copies
from edge_runtime.errors import InvalidRequest


@pytest.mark.parametrize(("gbnf", "depth"), [
    ('root ::= "a"', 0),
    ('root ::= ("a" ("b")?)*', 2),
    ('root ::= "((((" [(] x\nx ::= "\\"(" # ((((\n', 0),  # parentheses in literals, classes and comments
    ('root ::= [\\]((] ("a")', 1),
])
def test_gbnf_depth_counts_groups_only(gbnf: str, depth: int) -> None:
    assert gbnf_depth(gbnf) == depth


@pytest.mark.parametrize(("pattern", "copies"), [
    ("^abc$", 1),
    ("^a{3,7}$", 7),
    ("^(ab{2}){5}$", 10),
    ("^((a{0,10}){0,10}){0,10}$", 1000),
    ("^[{]{2}\\{9999}$", 2),  # a brace in a class or escaped is a literal, not a quantifier
    ("^a{5,}b{2}$", 5),
])
def test_pattern_copies_multiplies_nested_quantifiers(pattern: str, copies: int) -> None:
    assert pattern_copies(pattern) == copies


def test_a_grammar_one_group_too_deep_is_refused_and_the_limit_itself_is_not() -> None:
    def nested(depth: int) -> str:
        return "root ::= " + "(" * depth + '"a"' + ")" * depth

    check_gbnf(nested(MAX_DEPTH), param="grammar")
    with pytest.raises(InvalidRequest, match=f"nests {MAX_DEPTH + 1} groups deep"):
        check_gbnf(nested(MAX_DEPTH + 1), param="grammar")
