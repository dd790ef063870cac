"""Hostile STAC catalogs: a catalog served over HTTP cannot make a run read local files, and
cycles, deep trees, huge catalogs and random contents end in one line (issue 27, items 5 and 9).

Catalogs are served from a loopback server (tests/range_server.py); the local files they try to
reach are built in ``tmp_path``. An audit hook records every file Python opens while a scan
runs, so "refused before anything looks at it" is checked, not assumed.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rs_seg.config import IncomingConfig, StacSource
from rs_seg.errors import RsSegError
from rs_seg.ops import stac
from rs_seg.ops.incoming import scan
from rs_seg.ops.names import item_name
from rs_seg.ops.stac import select_scenes
from rs_seg.remote import is_remote, scene_path
from tests.helpers import json_values
from tests.range_server import RangeServer, serving
from tests.stac_helpers import catalog_dict, stac_item, write_cog, write_item_collection

REMOTE_ONLY = (
    "a catalog read over the network may only name remote files (http(s)://, s3://, gs://); "
    "set stac.allow_local_assets: true if it may name local ones"
)
_opened: list[str] | None = None  # files opened while a scan is watched (see watch_opens)


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)


@dataclass
class Site:
    """A loopback server, and a private folder with a raster and a catalog it must not reach."""

    server: RangeServer
    www: Path
    private: Path

    def publish(self, name: str, document: dict) -> str:
        """Serve ``document`` as ``name``; its URL."""
        path = self.www / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
        return f"{self.server.url}/{name}"

    def offering(self, name: str, asset_href: str, item_id: str = "evil") -> str:
        """Serve an item collection of one item whose asset is ``asset_href``; its URL."""
        item = stac_item(item_id, asset_href, "2024-05-01T00:00:00Z")
        write_item_collection(self.www / name, [item])
        return f"{self.server.url}/{name}"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(stac, "HTTP_RETRY_DELAY", 0.0)
    private = tmp_path / "private"
    write_cog(private / "secret.tif", 64)
    item = stac_item("secret", "secret.tif", "2024-05-01T00:00:00Z").to_dict()
    item["links"] = []
    (private / "secret.json").write_text(json.dumps(item))
    (private / "catalog.json").write_text(
        json.dumps(catalog_dict("private", [("item", "./secret.json")]))
    )
    with serving(tmp_path / "www") as server:
        write_cog(tmp_path / "www" / "public.tif", 64)
        yield Site(server, tmp_path / "www", private)


@contextlib.contextmanager
def watch_opens() -> Iterator[list[str]]:
    """The files Python opens inside the block."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def refused(source: StacSource, tmp_path: Path) -> str:
    """The one-line error of a scan of ``source``; checks nothing was opened or written."""
    cfg = IncomingConfig(
        stac=source, out_dir=tmp_path / "out", infer={"model": tmp_path / "never.pt"}
    )
    with watch_opens() as opened, pytest.raises(RsSegError) as caught:
        scan(cfg)
    local = [p for p in opened if p.startswith((str(tmp_path / "private"), "/etc"))]
    assert local == [], "no local file is opened before the refusal"
    assert not cfg.out_dir.exists(), "refused before the ledger is made"
    message = str(caught.value)
    assert "\n" not in message
    return message


def local_hrefs(site: Site) -> dict[str, str]:
    """Asset hrefs naming local files, existing or not, in every form GDAL would open."""
    secret = site.private / "secret.tif"
    return {
        "path": str(secret),
        "file url": secret.as_uri(),
        "file url, one slash": f"file:{secret}",
        "upper-case scheme": f"FILE://{secret}",
        "raw vsicurl": f"/vsicurl/{site.server.url}/public.tif",
        "raw vsizip": f"/vsizip/{site.private}/x.zip/secret.tif",
        "etc passwd": "/etc/passwd",
        "missing": str(site.private / "no-such-file.tif"),
        "windows drive": "C:/data/secret.tif",
    }


@pytest.mark.parametrize("case", ["path", "file url", "file url, one slash", "upper-case scheme",
                                  "raw vsicurl", "raw vsizip", "etc passwd", "missing",
                                  "windows drive"])  # fmt: skip
def test_a_remote_item_collection_naming_a_local_file_is_refused_alike(
    site: Site, tmp_path: Path, case: str
) -> None:
    href = local_hrefs(site)[case]
    url = site.offering("search.json", href)
    message = refused(StacSource(href=url), tmp_path)
    # the same words whether the file exists, is a raster, is not, or is missing: no oracle
    assert message == (
        f"{url}: item 'evil' names the local file {href!r} as its 'visual' asset; {REMOTE_ONLY}"
    )


@pytest.mark.parametrize("form", ["path", "file url", "raw vsicurl", "self"])
def test_a_remote_catalog_linking_a_local_child_is_refused(
    site: Site, tmp_path: Path, form: str
) -> None:
    """pystac's reader would open a local child link wherever the catalog came from."""
    child = site.private / "catalog.json"
    href = {"path": str(child), "file url": child.as_uri(),
            "raw vsicurl": f"/vsicurl/{site.server.url}/child.json", "self": ""}[form]  # fmt: skip
    if form == "self":  # the item collection names a local file as its self link: no base
        item = stac_item("evil", "secret.tif", "2024-05-01T00:00:00Z").to_dict()
        item["links"] = [{"rel": "self", "href": (site.private / "item.json").as_uri()}]
        url = site.publish("search.json", {"type": "FeatureCollection", "features": [item]})
        message = refused(StacSource(href=url), tmp_path)
        assert message == (
            f"{url}: item 'evil' names the local file 'secret.tif' as its 'visual' asset; "
            f"{REMOTE_ONLY}"
        )
        return
    url = site.publish("root.json", catalog_dict("root", [("child", href)]))
    message = refused(StacSource(href=url), tmp_path)
    assert message == f"{url}: {url!r} links to the local file {href!r}; {REMOTE_ONLY}"


def test_allow_local_assets_lets_a_remote_catalog_name_local_files(site: Site) -> None:
    secret = site.private / "secret.tif"
    url = site.offering("search.json", secret.as_uri())
    [scene] = select_scenes(StacSource(href=url, allow_local_assets=True)).scenes
    assert scene.scene == secret
    root = site.publish(
        "root.json", catalog_dict("root", [("child", str(site.private / "catalog.json"))])
    )
    [scene] = select_scenes(StacSource(href=root, allow_local_assets=True)).scenes
    assert (scene.item_id, scene.scene) == ("secret", secret)


def test_a_local_catalog_may_name_local_and_remote_files(site: Site, tmp_path: Path) -> None:
    secret = site.private / "secret.tif"
    items = [
        stac_item("by-path", str(secret), "2024-05-01T00:00:00Z"),
        stac_item("by-url", secret.as_uri(), "2024-05-01T00:00:00Z"),
        stac_item("remote", f"{site.server.url}/public.tif", "2024-05-01T00:00:00Z"),
    ]
    path = write_item_collection(tmp_path / "local.json", items)
    scenes = {s.item_id: str(s.scene) for s in select_scenes(StacSource(href=str(path))).scenes}
    remote = str(scene_path(f"{site.server.url}/public.tif"))
    assert scenes == {"by-path": str(secret), "by-url": str(secret), "remote": remote}
    [child] = select_scenes(StacSource(href=str(site.private / "catalog.json"))).scenes
    assert child.scene == secret


@pytest.mark.parametrize("shape", ["two catalogs", "its own child", "local"])
def test_a_catalog_cycle_is_one_line_not_a_recursion_error(
    site: Site, tmp_path: Path, shape: str
) -> None:
    if shape == "local":
        folder = tmp_path / "cycle"
        folder.mkdir()
        (folder / "a.json").write_text(json.dumps(catalog_dict("a", [("child", "b.json")])))
        (folder / "b.json").write_text(json.dumps(catalog_dict("b", [("child", "./a.json")])))
        href, back, target = str(folder / "a.json"), str(folder / "b.json"), str(folder / "a.json")
    elif shape == "its own child":
        href = site.publish("a.json", catalog_dict("a", [("child", "a.json")]))
        back = target = href
    else:
        href = site.publish("a.json", catalog_dict("a", [("child", "sub/b.json")]))
        back = site.publish("sub/b.json", catalog_dict("b", [("child", "../a.json")]))
        target = href
    with pytest.raises(RsSegError) as caught:
        select_scenes(StacSource(href=href))
    assert str(caught.value) == (
        f"{href}: {back!r} links back to {target!r} (a cycle); a STAC catalog must be a tree"
    )


def test_a_catalog_linked_twice_is_read_once(site: Site) -> None:
    site.publish("shared.json", catalog_dict("shared", [("item", "item.json")]))
    item = stac_item("once", f"{site.server.url}/public.tif", "2024-05-01T00:00:00Z").to_dict()
    item["links"] = []
    site.publish("item.json", item)
    links = [("child", "shared.json"), ("child", "./shared.json#again")]
    url = site.publish("root.json", catalog_dict("root", links))
    assert [s.item_id for s in select_scenes(StacSource(href=url)).scenes] == ["once"]
    reads = [r.path for r in site.server.requests if r.path.endswith("shared.json")]
    assert reads == ["/shared.json"]


def test_deep_and_large_catalogs_end_in_one_line(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stac, "MAX_DEPTH", 3)
    monkeypatch.setattr(stac, "MAX_ITEMS", 2)
    for level in range(6):
        site.publish(f"d{level}.json", catalog_dict(f"d{level}", [("child", f"d{level + 1}.json")]))
    deep = f"{site.server.url}/d0.json"
    with pytest.raises(RsSegError, match=r"catalogs nested more than 3 deep \(at '.*/d4.json'\)$"):
        select_scenes(StacSource(href=deep))
    public = f"{site.server.url}/public.tif"
    items = [stac_item(f"i{n}", public, "2024-05-01T00:00:00Z") for n in range(3)]
    write_item_collection(site.www / "many.json", items)
    with pytest.raises(RsSegError, match=r"more than 2 items or 100000 catalogs \(at 3\)"):
        select_scenes(StacSource(href=f"{site.server.url}/many.json"))
    links = [("item", f"i{n}.json") for n in range(3)]
    for n, item in enumerate(items):
        site.publish(f"i{n}.json", item.to_dict(include_self_link=False) | {"links": []})
    with pytest.raises(RsSegError, match=r"more than 2 items"):
        select_scenes(StacSource(href=site.publish("many-links.json", catalog_dict("m", links))))


# --- random catalogs ----------------------------------------------------------------------------

JSON_VALUES = json_values(max_leaves=8)
IDS = st.one_of(st.sampled_from(["a", "a/b", "a_b", "A_B", "..", ".", "", "é", "x" * 80]),
                st.text(max_size=12), st.integers(), st.none())  # fmt: skip
VALID_TIME, VALID_BBOX = "2024-05-01T00:00:00Z", [15.0, 47.8, 15.1, 47.9]
TIMES = st.sampled_from([VALID_TIME] * 4 + [None, "yesterday", 5, "2024-13-45T00:00:00Z"])
BBOXES = st.sampled_from([VALID_BBOX] * 4 + [None, [1, 2, 3], ["w", "s", "e", "n"], 7,
                                             [15.0, 47.8, 0, 15.1, 47.9, 1]])  # fmt: skip
EXTENT = {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}


def href_pools(site: Site, sentinel: Path) -> tuple[list[str], ...]:
    """Links and asset hrefs a hostile or broken catalog might hold: other documents of the
    example, local files, remote files, and odd text (never a file that reads without end,
    never a host that needs DNS)."""
    url = site.server.url
    documents = ["d0.json", "./d1.json", "d2.json", "sub/../d3.json", "d1.json#x", "", ".", ".."]
    local = [
        str(sentinel / "scene.tif"), (sentinel / "scene.tif").as_uri(), str(sentinel / "cat.json"),
        (sentinel / "cat.json").as_uri(), f"/vsicurl/{url}/public.tif", "/vsimem/x.tif",
        "/etc/passwd", "../" * 8 + "etc/passwd", "C:/x.tif", "\\\\srv\\x.tif", "data:,{}",
    ]  # fmt: skip
    remote = [
        f"{url}/public.tif", "public.tif", "../public.tif", "s3://bucket/x.tif", "gs://b/x.tif",
        "https://127.0.0.1:1/x.json", "ftp://127.0.0.1/x.tif", "http://[bad", "//127.0.0.1/x",
    ]  # fmt: skip
    odd = ["é/ü.tif", "\u202e.json", "a\nb.json", "%2e%2e/%2e%2e/x.json"]
    return documents, local, remote, odd


def documents(pools: tuple[list[str], ...]) -> st.SearchStrategy[list[object]]:
    """A root document (catalog, collection, item collection or item) and up to three more."""
    hrefs = st.one_of(*(st.sampled_from(pool) for pool in pools),
                      st.text(alphabet="ab./_%é\\", max_size=10))  # fmt: skip
    rels = st.sampled_from(["child", "child", "item", "item", "self", "root", "parent"])
    links = st.lists(st.tuples(rels, hrefs), max_size=4)
    catalogs = st.builds(
        lambda kind, cid, ls: {**catalog_dict(cid, ls), "type": kind, "license": "CC0-1.0",
                               "extent": EXTENT},
        st.sampled_from(["Catalog", "Collection"]), IDS, links,
    )  # fmt: skip
    items = st.builds(
        lambda iid, key, href, when, bbox, ls, coll: {
            "type": "Feature", "stac_version": "1.0.0", "id": iid, "geometry": None,
            "bbox": bbox, "properties": {"datetime": when}, "collection": coll,
            "links": [{"rel": r, "href": h} for r, h in ls], "assets": {key: {"href": href}},
        },
        IDS, st.sampled_from(["visual", "visual", "image"]), hrefs, TIMES, BBOXES, links,
        st.sampled_from([None, "fields", 3]),
    )  # fmt: skip
    collections = st.builds(lambda f: {"type": "FeatureCollection", "features": f},
                            st.lists(items, min_size=1, max_size=4))  # fmt: skip
    document = st.one_of(catalogs, items, collections, JSON_VALUES)
    root = st.one_of(catalogs, collections, items)
    return st.builds(lambda first, rest: [first, *rest], root, st.lists(document, max_size=3))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_random_catalogs_give_a_selection_or_one_line_and_touch_nothing(
    site: Site, tmp_path: Path
) -> None:
    sentinel = tmp_path / "sentinel"
    write_cog(sentinel / "scene.tif", 16)
    (sentinel / "cat.json").write_text(json.dumps(catalog_dict("s", [("item", "item.json")])))
    before = snapshot(sentinel) | snapshot(site.private)
    private = (str(sentinel), str(site.private))  # the server opens only what it serves
    examples = iter(range(10**6))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    @given(docs=documents(href_pools(site, sentinel)), filtered=st.booleans())
    def check(docs: list[object], filtered: bool) -> None:
        folder = f"ex{next(examples)}"
        for n, doc in enumerate(docs):
            site.publish(f"{folder}/d{n}.json", doc)  # type: ignore[arg-type]
        sub = site.www / folder / "sub"
        sub.mkdir(exist_ok=True)
        filters = {"datetime": "2024-01-01/.."} if filtered else {}
        for href in (f"{site.server.url}/{folder}/d0.json", str(site.www / folder / "d0.json")):
            with watch_opens() as opened:
                try:
                    selection = select_scenes(StacSource(href=href, **filters))
                except RsSegError as exc:
                    assert "\n" not in str(exc)
                    selection = None
            if href.startswith("http"):  # a remote catalog reads and names no local file
                assert not [p for p in opened if p.startswith(private)], opened
                assert selection is None or all(is_remote(s.scene) for s in selection.scenes)
            if selection is not None:
                names = [item_name(s.item_id) for s in selection.scenes]
                assert len(set(names)) == len(names)
        assert snapshot(sentinel) | snapshot(site.private) == before

    check()
