"""The ledger records the STAC item of a scene, also when the ledger file was replaced mid-run."""

from __future__ import annotations

from pathlib import Path

from rs_seg.ops.ledger import Ledger


def test_the_item_id_is_written_again_with_a_replaced_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.claim("f", "m", "https://h.example/s.tif", item_id="s-1")
    (tmp_path / "ledger.sqlite").unlink()
    assert ledger.fail("f", "m", "HTTP 503", "https://h.example/s.tif", "s-1")
    [entry] = ledger.entries()
    assert (entry.status, entry.item_id, entry.path) == ("failed", "s-1", "https://h.example/s.tif")
