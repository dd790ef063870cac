"""Scene names: one folder and field-id prefix per scene, never shared, stable, safe."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from hypothesis import given, settings
from hypothesis import strategies as st

from rs_seg.ops.names import inbox_key, inbox_name, inbox_root, item_name

SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,76}")
# Pieces that sanitize alike, differ in case only, are separators or dots, or are not ASCII.
PIECES = ["a", "A", "b", "x", "X", "a_b", "a-b", "a b", "a.b", "_", "-", ".", "..", "é", "e\u0301",
          "ß", "ss", "con", "nul", "0123456789ab", "-0123456789ab", "\\", ":", "*"]  # fmt: skip
SUFFIXES = ["", ".tif", ".tiff", ".TIF", ".vrt", ".tif.tif", "."]
segments = st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join)
relative_paths = st.builds(
    lambda parts, suffix: "/".join(parts) + suffix,
    st.lists(segments, min_size=1, max_size=3), st.sampled_from(SUFFIXES),
)  # fmt: skip
item_ids = st.one_of(segments, relative_paths, st.text(max_size=90))


def assert_unique_and_safe(names: dict[str, str]) -> None:
    """Every name is one safe path component, and no two keys share one, even ignoring case."""
    for key, name in names.items():
        assert SAFE.fullmatch(name), (key, name)
    folded: dict[str, str] = {}
    for key, name in names.items():
        assert folded.setdefault(name.casefold(), key) == key, (key, folded[name.casefold()], name)


@settings(max_examples=200, deadline=None)
# unique as paths: "a/." and "a" name one file, which an inbox lists once
@given(st.lists(relative_paths, max_size=30, unique_by=lambda path: PurePosixPath(path)))
def test_inbox_names_are_unique_safe_and_stable(paths: list[str]) -> None:
    names = {path: inbox_name(PurePosixPath(path)) for path in paths}
    assert_unique_and_safe(names)
    for path in paths[: len(paths) // 2]:  # a name depends on its own path only
        assert inbox_name(path) == names[path]


@settings(max_examples=200, deadline=None)
@given(st.lists(item_ids, max_size=30, unique=True))
def test_item_names_are_unique_safe_and_stable(ids: list[str]) -> None:
    names = {item_id: item_name(item_id) for item_id in ids}
    assert_unique_and_safe(names)
    assert {item_name(item_id) for item_id in reversed(ids)} == set(names.values())


def test_plain_names_are_kept_and_others_get_a_hash_of_the_whole_key() -> None:
    assert inbox_name("s0.tif") == "s0"
    assert item_name("s2-a") == "s2-a"
    same_file = [inbox_name("a/x.tif"), inbox_name("b/x.tif"), inbox_name("x.tiff"),
                 inbox_name("x.tif"), inbox_name("X.tif")]  # fmt: skip
    assert same_file[3] == "x" and len(set(same_file)) == 5
    assert re.fullmatch(r"a_x-[0-9a-f]{12}", same_file[0])
    assert item_name("a_b") == "a_b" and re.fullmatch(r"a_b-[0-9a-f]{12}", item_name("a/b"))
    assert re.fullmatch(
        r"S2B_33UWP_20240501_0_L2A-[0-9a-f]{12}", item_name("S2B_33UWP_20240501_0_L2A")
    )
    for hostile in ("..", ".", "", "/etc/passwd", "../../x", ".hidden", "con", "a" * 300):
        assert SAFE.fullmatch(item_name(hostile)), hostile


def test_an_inbox_keeps_its_names_however_it_is_given(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "a").mkdir(parents=True)
    assert inbox_root(str(inbox)) == inbox
    assert inbox_root(f"{inbox}/**/*.tif") == inbox
    assert inbox_root(f"{inbox}/a/x.tif") == inbox / "a", "one file: its folder"
    assert inbox_root("*.tif") == Path()
    assert inbox_key(inbox / "a" / "x.tif", inbox) == PurePosixPath("a/x.tif")
