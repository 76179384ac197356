import pytest

from minivz.spec import parse_options, parse_spec, parse_value


def test_parse_options():
    assert parse_options("") == {}
    assert parse_options(" a=1, ,b=x=y:z ") == {"a": "1", "b": "x=y:z"}
    with pytest.raises(ValueError, match="key=value"):
        parse_options("a")
    with pytest.raises(ValueError, match="twice"):
        parse_options("a=1,a=2")


def test_parse_spec_names_the_registry():
    assert parse_spec(" knn : k=5") == ("knn", {"k": "5"})
    with pytest.raises(ValueError, match="in reasoner spec 'knn:k'"):
        parse_spec("knn:k", "reasoner")
    assert parse_spec(":k=1") == ("", {"k": "1"})  # the registry rejects it, listing valid names


def test_parse_value():
    assert parse_value("On", bool) is True and parse_value("0", bool) is False
    assert parse_value("3", int) == 3 and parse_value("0.5", float) == 0.5 and parse_value("x", str) == "x"
    with pytest.raises(ValueError, match="true or false"):
        parse_value("maybe", bool)
    with pytest.raises(ValueError):
        parse_value("1.5", int)
