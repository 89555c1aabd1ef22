"""``data list`` and ``data fetch`` against a local HTTP server on 127.0.0.1 only: archives in the published layouts,
a transfer that breaks off and resumes, wrong sums and damaged archives that leave nothing behind, the lists read
out of a remote zip by range requests, a dataset behind a login, a local parquet file standing in for the hub,
and the data root runs find datasets in.
"""
import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_field_loaders import VOC_IDS, write_cityscapes, write_voc

from bench.cli import main
from bench.data import DatasetError, load_dataset
from bench.data import sources
from bench.data.fetch import FetchError, fetch
from bench.data.sources import HubSource

FIXTURES = Path(__file__).parent / "fixtures"


class Server(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` with HTTP Range; a path in ``cut`` breaks off after that many bytes, once."""

    files: dict[str, bytes] = {}
    cut: dict[str, int] = {}
    seen: list[tuple[str, str | None]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        data, wanted = self.files.get(self.path), self.headers.get("Range")
        self.seen.append((self.path, wanted))
        if data is None:
            self.send_error(404)
            return
        start, end = 0, len(data) - 1
        if wanted:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last), end) if last else end
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:end + 1]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:self.cut.pop(self.path, len(body))])


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def serve(path: str, data: bytes) -> str:
    Server.files[path] = data
    return path


def tar_of(folder: Path, name: str, mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        tar.add(folder, arcname=name)
    return buffer.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_tree(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.relative_to(folder)}": p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def voc_tar(tmp_path_factory) -> bytes:
    """VOCtrainval_11-May-2012.tar as published: VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets}."""
    build = tmp_path_factory.mktemp("voc-build")
    write_voc(build)
    return tar_of(build / "VOCdevkit", "VOCdevkit")


def test_voc_is_fetched_checked_and_unpacked_where_the_loader_reads_it(server, voc_tar, tmp_path, capsys):
    url = server + serve("/voc.tar", voc_tar)
    assert main(["--no-progress", "data", "fetch", "voc", "--to", str(tmp_path), "--url", url,
                 "--md5", md5(voc_tar)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(f"--data voc={(tmp_path / 'voc').resolve()} (or --data-root {tmp_path} for every dataset "
                         f"there)")
    data = load_dataset("voc", "val", (16, 16), path=str(tmp_path / "voc"))
    assert [p[0].stem for p in data.pairs] == VOC_IDS["val"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]  # no archive, .part or staging folder left
    assert fetch("voc", tmp_path) == (tmp_path / "voc", False)  # there: not fetched again, nothing downloaded


def test_an_interrupted_transfer_resumes_where_it_broke_off(server, voc_tar, tmp_path):
    url = server + serve("/resume.tar", voc_tar)
    half = len(voc_tar) // 2
    Server.cut["/resume.tar"] = half
    with pytest.raises(FetchError, match=f"broke off at {half} of {len(voc_tar)} bytes; run the same command again"):
        fetch("voc", tmp_path, [url], [md5(voc_tar)], progress=False)
    assert (tmp_path / ".downloads" / "VOCtrainval_11-May-2012.tar.part").stat().st_size == half
    assert not (tmp_path / "voc").exists()
    Server.seen.clear()
    assert fetch("voc", tmp_path, [url], [md5(voc_tar)], progress=False) == (tmp_path / "voc", True)
    assert Server.seen == [("/resume.tar", f"bytes={half}-")]
    assert (tmp_path / "voc" / "JPEGImages").is_dir()


def test_a_wrong_checksum_names_both_sums_and_leaves_nothing(server, voc_tar, tmp_path):
    url = server + serve("/wrong.tar", voc_tar)
    with pytest.raises(FetchError, match=f"md5 {md5(voc_tar)}, expected {'0' * 32} \\(from --md5\\). The download "
                                         f"was deleted"):
        fetch("voc", tmp_path, [url], ["0" * 32], progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    with pytest.raises(FetchError, match="no checksum is published for nyu_depth_v2_labeled.mat, splits.mat.*"
                                         "--unverified"):
        fetch("nyuv2", tmp_path, progress=False)  # refused before anything is downloaded


def test_a_damaged_archive_or_another_layout_is_refused_and_nothing_passes_for_data(server, voc_tar, tmp_path):
    damaged = voc_tar[:len(voc_tar) // 3]
    url = server + serve("/damaged.tar", damaged)
    with pytest.raises(FetchError, match="VOCtrainval_11-May-2012.tar cannot be unpacked .*it was deleted"):
        fetch("voc", tmp_path, [url], [md5(damaged)], progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    build = tmp_path / "other"
    write_voc(build)
    other = tar_of(build / "VOCdevkit" / "VOC2012", "VOC2012")  # one folder short of the published tar
    url = server + serve("/other.tar", other)
    with pytest.raises(FetchError, match=r"holds no 'VOCdevkit/VOC2012' \(at its top: VOC2012\)"):
        fetch("voc", tmp_path / "root", [url], [md5(other)], progress=False)
    assert not (tmp_path / "root" / "voc").exists()


def test_sbd_adds_the_augmented_training_set_to_voc(server, voc_tar, tmp_path):
    with pytest.raises(FetchError, match="sbd adds to voc, which is not at"):
        fetch("sbd", tmp_path, progress=False)
    fetch("voc", tmp_path, [server + serve("/voc-for-sbd.tar", voc_tar)], [md5(voc_tar)], progress=False)
    release = tmp_path / "release" / "benchmark_RELEASE" / "dataset"
    (release / "cls").mkdir(parents=True)
    sbd_ids = {"train": ["2010_000002", "2007_000033"], "val": ["2008_000123"]}  # 2007_000033 is in VOC's val
    for split, ids in sbd_ids.items():
        (release / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for k, stem in enumerate(ids):
            scipy.io.savemat(release / "cls" / f"{stem}.mat",
                             {"GTcls": {"Segmentation": np.full((40, 56), 3 + k, np.uint8)}})
    archive = tar_of(tmp_path / "release" / "benchmark_RELEASE", "benchmark_RELEASE", "w:gz")
    fetch("sbd", tmp_path, [server + serve("/benchmark.tgz", archive)], [md5(archive)], progress=False)
    voc = tmp_path / "voc"
    ids = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert ids == ["2007_000032", "2007_000039", "2008_000123", "2010_000002"]  # SBD + VOC train, less VOC val
    assert np.unique(np.asarray(Image.open(voc / "SegmentationClassAug" / "2010_000002.png"))).tolist() == [3]
    own = np.asarray(Image.open(voc / "SegmentationClass" / "2008_000123.png"))
    assert (np.asarray(Image.open(voc / "SegmentationClassAug" / "2008_000123.png")) == own).all()  # VOC's mask
    assert len(load_dataset("voc", "train", (16, 16), path=str(voc), image_list="train_aug.txt")) == 4
    assert fetch("sbd", tmp_path)[1] is False


def test_coco_stuff_takes_only_the_curated_lists_out_of_the_authors_zip(server, tmp_path):
    """COCO's image zips and the stuffthingmaps zip unpack into images/ and annotations/; FeatUp's lists come out
    of the authors' cocostuff.zip by range requests, which never ask for the whole file."""
    coco = FIXTURES / "coco_stuff"
    lists = {f"cocostuff/{p}": (coco / "curated" / "train2017" / Path(p).name).read_bytes()
             for p in sources.COCO_LISTS if "train2017" in p}
    lists["cocostuff/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"] = b"000000000139\n"
    lists["cocostuff/images/val2017/000000000139.jpg"] = b"\0" * 100_000  # the rest of the prepared folder
    archives = {"train2017.zip": zip_of(zip_tree(coco / "images" / "train2017", "train2017")),
                "val2017.zip": zip_of(zip_tree(coco / "images" / "val2017", "val2017")),
                "stuffthingmaps.zip": zip_of({**zip_tree(coco / "annotations" / "train2017", "train2017"),
                                              **zip_tree(coco / "annotations" / "val2017", "val2017")}),
                "cocostuff.zip": zip_of(lists)}
    urls = [server + serve(f"/{name}", data) for name, data in archives.items()]
    sums = [md5(data) for name, data in archives.items() if name != "cocostuff.zip"]  # a zip read in part has none
    with pytest.raises(FetchError, match="coco_stuff has 4 file.*give --url once per file"):
        fetch("coco_stuff", tmp_path, urls[:1], unverified=True, progress=False)
    with pytest.raises(FetchError, match="no checksum is published for cocostuff.zip"):
        fetch("coco_stuff", tmp_path, urls, sums, progress=False)
    Server.seen.clear()
    fetch("coco_stuff", tmp_path, urls, sums, unverified=True, progress=False, say=lambda text: None)
    assert all(wanted for path, wanted in Server.seen if path == "/cocostuff.zip")
    folder = tmp_path / "coco_stuff"
    for name in sources.COCO_LISTS:
        assert (folder / name).is_file()
    data = load_dataset("coco_stuff", "train", (16, 16), path=str(folder), image_list="Coco164kFull_Stuff_Coarse.txt")
    assert len(data) == len((coco / "curated/train2017/Coco164kFull_Stuff_Coarse.txt").read_text().split())


def test_a_dataset_behind_a_login_says_how_to_get_it_and_unpacks_files_downloaded_by_hand(tmp_path):
    with pytest.raises(FetchError, match="(?s)Register at https://www.cityscapes-dataset.com/register/.*Then: python "
                                         "run_bench.py data fetch cityscapes --url file:///PATH/TO/gtFine"):
        fetch("cityscapes", tmp_path)
    with pytest.raises(FetchError, match="(?s)image-net.org/signup.*huggingface-cli login.*--source hf"):
        fetch("imagenet", tmp_path)
    write_cityscapes(tmp_path / "by-hand")
    for part in ("gtFine", "leftImg8bit"):
        (tmp_path / f"{part}.zip").write_bytes(zip_of(zip_tree(tmp_path / "by-hand" / part, part)))
    folder, fetched = fetch("cityscapes", tmp_path / "root", [(tmp_path / f"{p}.zip").as_uri()
                                                              for p in ("gtFine", "leftImg8bit")],
                            unverified=True, progress=False, say=lambda text: None)
    assert fetched and len(load_dataset("cityscapes", "train", (8, 16), path=str(folder))) == 3


def test_imagenet_from_the_hub_is_written_in_the_layout_the_loader_reads(tmp_path, monkeypatch):
    """A local parquet file in the hub's form (image bytes and path, class index) stands in for ILSVRC/imagenet-1k."""
    import datasets

    photos = []
    for k in range(3):
        buffer = io.BytesIO()
        Image.fromarray(np.full((12, 10, 3), 40 * k, np.uint8)).save(buffer, "JPEG")
        photos.append({"bytes": buffer.getvalue(), "path": f"ILSVRC2012_val_{k + 1:08d}.JPEG"})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": photos, "label": [0, 1, 999]}, features).to_parquet(tmp_path / "val.parquet")
    hub = HubSource("parquet", "validation", "https://huggingface.co/datasets/ILSVRC/imagenet-1k",
                    {"validation": str(tmp_path / "val.parquet")})
    monkeypatch.setitem(sources.SOURCES, "imagenet", dataclasses.replace(sources.SOURCES["imagenet"], hub=hub))
    folder, _ = fetch("imagenet", tmp_path / "root", hub=True, progress=False)
    written = folder / "val" / "n01440764" / "ILSVRC2012_val_00000001.JPEG"
    assert written.read_bytes() == photos[0]["bytes"]  # the published bytes, not re-encoded
    data = load_dataset("imagenet", "val", (8, 8), path=str(folder))
    assert [int(data[i]["label"]) for i in range(len(data))] == [0, 1, 999]


def test_runs_find_fetched_datasets_under_the_data_root(tmp_path, monkeypatch):
    from bench.running.session import build_context

    write_voc(tmp_path)
    (tmp_path / "VOCdevkit" / "VOC2012").rename(tmp_path / "voc")
    context = build_context("jafar", {}, "cpu", progress=False, data_root=str(tmp_path))
    assert context.data_paths == {"voc": str(tmp_path / "voc")}
    given = build_context("jafar", {"voc": "/elsewhere"}, "cpu", progress=False, data_root=str(tmp_path))
    assert given.data_paths == {"voc": "/elsewhere"}  # --data wins
    monkeypatch.setenv("FEATUP_BENCH_DATA", str(tmp_path))
    assert build_context("jafar", {}, "cpu", progress=False).data_paths == {"voc": str(tmp_path / "voc")}
    table = sources.catalogue(tmp_path).set_index("dataset")
    assert set(table.index) >= {"coco_stuff", "voc", "ade20k", "cityscapes", "nyuv2", "imagenet"}
    assert table.loc["voc", "here"] == "yes" and table.loc["ade20k", "here"] == "no"
    assert table.loc["voc", "use"] == f"--data voc={tmp_path.resolve() / 'voc'}"
    assert "jafar" in table.loc["voc", "profiles"]


def test_missing_data_points_to_data_fetch():
    from bench.running.dry_run import plan_tasks
    from bench.running.session import build_context

    with pytest.raises(DatasetError, match="pass --data ade20k=PATH, or fetch it with `python run_bench.py data fetch "
                                           "ade20k`"):
        load_dataset("ade20k", "val", (8, 8))
    planned = plan_tasks(["bilinear"], ["probe_seg"], "dinov2", build_context("jafar", {}, "cpu", progress=False), None)
    assert "`python run_bench.py data fetch voc`" in planned.missing["voc"]  # the dry run's problem line
