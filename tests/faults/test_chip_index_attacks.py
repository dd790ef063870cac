"""A chip index is a file anyone can edit or hand over: the chip files it names must stay inside
its folder, or training refuses the folder in one line before reading a pixel."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyogrio
import pytest

from rs_seg.errors import RsSegError
from rs_seg.prepare.index import INDEX_FILE, INDEX_LAYER, read_index
from rs_seg.train.dataset import load_chip_splits
from tests.helpers import assert_one_line_error, rs_seg


def _edited_copy(chips: Path, tmp_path: Path, column: str, value: str) -> Path:
    """A copy of ``chips`` whose first index row names ``value`` as its ``column`` file."""
    folder = Path(shutil.copytree(chips, tmp_path / "chips"))
    index = pyogrio.read_dataframe(folder / INDEX_FILE, layer=INDEX_LAYER)
    index.loc[0, column] = value
    (folder / INDEX_FILE).unlink()
    pyogrio.write_dataframe(index, folder / INDEX_FILE, layer=INDEX_LAYER)
    return folder


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A GeoTIFF outside the chip folder that an edited index might point at."""
    path = tmp_path / "private" / "secret.tif"
    path.parent.mkdir()
    path.write_bytes(b"not for training")
    return path


@pytest.mark.parametrize("column", ["image", "mask"])
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "empty"])
def test_chip_paths_outside_the_folder_are_refused(
    tiny_chips: Path, tmp_path: Path, secret: Path, column: str, kind: str
) -> None:
    value = {"absolute": str(secret), "dotdot": "../private/secret.tif", "empty": ""}[kind]
    folder = _edited_copy(tiny_chips, tmp_path, column, value)
    with pytest.raises(RsSegError, match="not inside its folder") as raised:
        read_index(folder)
    assert str(folder / INDEX_FILE) in str(raised.value)


def test_a_symlink_out_of_the_folder_is_refused(
    tiny_chips: Path, tmp_path: Path, secret: Path
) -> None:
    folder = _edited_copy(tiny_chips, tmp_path, "image", "images/link.tif")
    (folder / "images" / "link.tif").symlink_to(secret)
    with pytest.raises(RsSegError, match="leads out of its folder"):
        load_chip_splits(folder)


def test_an_unchanged_index_reads(tiny_chips: Path) -> None:
    index = read_index(tiny_chips)
    assert all(Path(p).is_file() for p in index["image_path"])


def test_train_on_an_edited_index_is_one_line(
    tiny_chips: Path, tmp_path: Path, secret: Path
) -> None:
    folder = _edited_copy(tiny_chips, tmp_path, "image", str(secret))
    done = rs_seg("train", "--chips", folder, "--out", tmp_path / "run", cwd=tmp_path)
    assert_one_line_error(done, "not inside its folder")
    assert not (tmp_path / "run").exists()


def test_a_damaged_index_is_one_line(tiny_chips: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_chips, tmp_path / "chips"))
    (folder / INDEX_FILE).write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(RsSegError, match="cannot read the chip index"):
        read_index(folder)
