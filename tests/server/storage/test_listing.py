"""The rule that keeps partial uploads out of the cache: listings made by hand, no server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.storage.listing import ObjectInfo, key_problem, plan, unit_of

A, B, C = ObjectInfo(10, '"a"'), ObjectInfo(20, '"b"'), ObjectInfo(30, '"c"')
MODEL = {"m/config.pbtxt": A, "m/1/model.py": B}


def test_units() -> None:
    assert unit_of("m/config.pbtxt") == ("m", "")
    assert unit_of("m/labels/classes.txt") == ("m", "")  # a non-version folder: the model's own files
    assert unit_of("m/1/model.py") == ("m", "1")
    assert unit_of("m/12/sub/weights.bin") == ("m", "12")
    assert unit_of("m/01/model.py") == ("m", "")  # not a version folder (Triton's rule)
    assert unit_of("m/1") == ("m", "")  # a file named 1, not a folder
    assert unit_of("README.md") is None  # at the repository's root: no model's


def test_keys_that_cannot_become_files() -> None:
    for key in (
        "../x/config.pbtxt",
        "m/../../etc/passwd",
        "m//1/a",
        "m/./a",
        ".clipperd/x",
        "m/1/a\\b",
        "m/" + "x" * 300,
    ):
        assert key_problem(key) is not None, key
    assert key_problem("m/1/model.py") is None
    assert key_problem("m/.hidden-file") is None  # only a hidden model folder is refused


def test_a_first_listing_takes_nothing_a_second_equal_one_takes_all() -> None:
    first = plan(None, MODEL, {})
    assert not first.take
    assert first.waiting == {("m", ""), ("m", "1")}
    second = plan(MODEL, MODEL, {})
    assert set(second.take) == {("m", ""), ("m", "1")}
    assert not second.waiting


def test_what_the_cache_holds_as_listed_needs_no_second_listing() -> None:
    steps = plan(None, MODEL, MODEL)  # a warm start: nothing to wait for
    assert not steps.take
    assert not steps.waiting
    assert not steps.drop


def test_a_version_still_uploading_waits_and_the_rest_is_taken() -> None:
    before = {**MODEL, "m/2/model.py": B}
    after = {**MODEL, "m/2/model.py": B, "m/2/weights.bin": C}  # a second file arrived between the scans
    steps = plan(before, after, MODEL)
    assert ("m", "2") in steps.waiting
    assert not steps.take
    steps = plan(after, after, MODEL)
    assert set(steps.take) == {("m", "2")}
    assert steps.take[("m", "2")] == {"m/2/model.py": B, "m/2/weights.bin": C}


def test_a_changed_object_is_a_change_even_with_the_same_keys() -> None:
    changed = {**MODEL, "m/1/model.py": ObjectInfo(20, '"other"')}
    assert ("m", "1") in plan(MODEL, changed, MODEL).waiting
    assert set(plan(changed, changed, MODEL).take) == {("m", "1")}


def test_versions_wait_for_their_config() -> None:
    uploading = {"m/config.pbtxt": A, "m/1/model.py": B}
    then = {"m/config.pbtxt": C, "m/1/model.py": B}  # the config changed between the scans
    steps = plan(uploading, then, {})
    assert steps.waiting == {("m", ""), ("m", "1")}
    no_config = {"m/1/model.py": B}
    steps = plan(no_config, no_config, {})
    assert steps.waiting == {("m", "1")}
    assert not steps.take


def test_removal_needs_two_listings_without_the_unit() -> None:
    cached = {**MODEL, "m/2/model.py": B}
    steps = plan(cached, MODEL, cached)
    assert ("m", "2") in steps.waiting
    assert not steps.drop
    steps = plan(MODEL, MODEL, cached)
    assert steps.drop == {("m", "2")}


listings = st.dictionaries(
    st.sampled_from(["m/config.pbtxt", "m/1/a", "m/1/b", "m/2/a", "n/config.pbtxt", "n/3/a", "top"]),
    st.sampled_from([A, B, C]),
    max_size=7,
)


@given(previous=listings, current=listings, cached=listings)
def test_nothing_is_taken_unless_two_listings_agree(
    previous: dict[str, ObjectInfo], current: dict[str, ObjectInfo], cached: dict[str, ObjectInfo]
) -> None:
    steps = plan(previous, current, cached)
    for (model, version), objects in steps.take.items():
        in_unit = {k: v for k, v in previous.items() if unit_of(k) == (model, version)}
        assert objects == in_unit
        if version:  # and the model's own files are settled: listed twice alike, or held as listed
            own = {k: v for k, v in current.items() if unit_of(k) == (model, "")}
            assert own
            assert own in (
                {k: v for k, v in previous.items() if unit_of(k) == (model, "")},
                {k: v for k, v in cached.items() if unit_of(k) == (model, "")},
            )
    for unit in steps.drop:
        assert all(unit_of(k) != unit for k in (*previous, *current))
    assert not (set(steps.take) & steps.waiting)
