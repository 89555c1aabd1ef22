import pytest

from bench.registry import METHODS, Registry, RegistryError


def test_unknown_name_suggests_the_closest():
    with pytest.raises(RegistryError, match="Did you mean 'bilinear'"):
        METHODS.get("bilinar")


def test_unknown_name_without_close_match_lists_known():
    with pytest.raises(RegistryError, match="Known: .*low_res"):
        METHODS.get("zzzzzz")


def test_duplicate_name_refused_and_first_kept():
    reg = Registry("thing")

    class A:
        name = "a"

    class B:
        name = "a"

    reg.register(A)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(B)
    assert reg.get("a") is A
    reg.register(A)  # the same object twice is harmless (module re-import)


def test_entry_without_name_refused():
    with pytest.raises(RegistryError, match="no 'name'"):
        Registry("thing").register(object())
