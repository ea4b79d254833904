"""Dataset readers, lookup order and the DataLoader (gpucnn.data), on small files the tests write themselves."""
import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from gpucnn import data
from gpucnn import devices as backend
from gpucnn.data import sources
from gpucnn.data import DataLoader, Dataset, DatasetError

REAL_FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No test sees the user's cache, $GPUCNN_DATA, the Debian folder or the real network."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    monkeypatch.setenv("GPUCNN_MIRROR", "http://127.0.0.1:9/unreachable/")
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


# ------------------------------------------------------------------------------------- file writers

def idx_bytes(arr, code=0x08, ndim=None):
    arr = np.asarray(arr)
    nd = arr.ndim if ndim is None else ndim
    dt = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}[code]
    return bytes([0, 0, code, nd]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dt).tobytes()


def write(path, payload, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def sample_images(n, h=28, w=28, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, c, h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_mnist(folder, split="test", n=12, gz=True, seed=0, num_classes=10):
    imgs = sample_images(n, seed=seed)
    labels = (np.arange(n) * 7 + seed) % num_classes
    prefix = "t10k" if split == "test" else "train"
    suffix = ".gz" if gz else ""
    write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(imgs), gz)
    write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels.astype(np.uint8)), gz)
    return imgs, labels


# ---------------------------------------------------------------------------------------- idx readers

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["imgs-idx3-ubyte", "imgs-idx3-ubyte.gz"])
def test_idx_images_gzip_detected_by_content_not_name(tmp_path, gz, name):
    imgs = sample_images(5)
    p = write(tmp_path / name, idx_bytes(imgs), gz)
    out = data.read_idx_images(p)
    assert out.dtype == np.uint8 and out.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(out[:, 0], imgs)
    assert out.flags.writeable


def test_idx_labels_are_int64(tmp_path):
    p = write(tmp_path / "l", idx_bytes(np.array([3, 0, 9, 1], np.uint8)), gz=True)
    out = data.read_idx_labels(p)
    assert out.dtype == np.int64
    assert out.tolist() == [3, 0, 9, 1]


def test_idx_multibyte_big_endian(tmp_path):
    a = np.array([[1, -2, 300], [-40000 // 2, 5, 6]], np.int16)
    out = data.read_idx(write(tmp_path / "a", idx_bytes(a, code=0x0B)))
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, a)
    f = np.array([0.5, -1.25], np.float32)
    np.testing.assert_array_equal(data.read_idx(write(tmp_path / "f", idx_bytes(f, code=0x0D))), f)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_images_file_says_what_header_promised(tmp_path, gz):
    full = idx_bytes(sample_images(5))
    p = write(tmp_path / "train-images-idx3-ubyte.gz", full[:16 + 3 * 784 + 10], gz)
    with pytest.raises(DatasetError) as e:
        data.read_idx_images(p)
    msg = str(e.value)
    assert str(p) in msg and "truncated" in msg
    assert f"header says 5 images of 28x28 ({16 + 5 * 784} bytes) but the file holds {16 + 3 * 784 + 10}" in msg


def test_truncated_labels_and_header(tmp_path):
    p = write(tmp_path / "lab", idx_bytes(np.zeros(100, np.uint8))[:58])
    with pytest.raises(DatasetError, match=r"lab: truncated: header says 100 labels \(108 bytes\) but the file holds 58"):
        data.read_idx_labels(p)
    p = write(tmp_path / "hdr", bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DatasetError, match="hdr: truncated: the idx header needs 16 bytes"):
        data.read_idx_images(p)


def test_too_long_file(tmp_path):
    p = write(tmp_path / "long", idx_bytes(sample_images(2)) + b"junk")
    with pytest.raises(DatasetError, match=r"long: too long: header says 2 images of 28x28 \(1584 bytes\) but the file holds 1588"):
        data.read_idx_images(p)


@pytest.mark.parametrize("payload", [b"", b"\x12\x34\x08\x03" + bytes(12), b"P5\n28 28\n255\n"])
def test_bad_magic(tmp_path, payload):
    p = write(tmp_path / "bad", payload)
    with pytest.raises(DatasetError, match="bad: not an idx file: bad magic number"):
        data.read_idx_images(p)


def test_unknown_type_code_and_wrong_pixel_type(tmp_path):
    p = write(tmp_path / "t7", bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(DatasetError, match="t7: unknown idx data type code 0x07"):
        data.read_idx(p)
    p = write(tmp_path / "i32", idx_bytes(np.zeros((2, 3, 3), np.int32), code=0x0C))
    with pytest.raises(DatasetError, match="i32: expected unsigned-byte pixels"):
        data.read_idx_images(p)


def test_wrong_dimension_count(tmp_path):
    p = write(tmp_path / "flat-images", idx_bytes(np.zeros((4, 784), np.uint8)))
    with pytest.raises(DatasetError, match=r"flat-images: expected 3 dimension\(s\) \(images file\), the header says 2"):
        data.read_idx_images(p)
    p = write(tmp_path / "labels2d", idx_bytes(np.zeros((4, 1), np.uint8)))
    with pytest.raises(DatasetError, match="labels2d: expected 1 dimension"):
        data.read_idx_labels(p)


def test_corrupt_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(sample_images(20)))
    p = write(tmp_path / "cut.gz", blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="cut.gz: corrupt or truncated gzip data"):
        data.read_idx_images(p)


def test_label_out_of_range(tmp_path):
    p = write(tmp_path / "labels", idx_bytes(np.array([1, 2, 3, 10, 11], np.uint8)))
    with pytest.raises(DatasetError, match=r"labels: label 10 at index 3 is outside 0..9 \(2 such label"):
        data.read_idx_labels(p)


def test_image_label_count_mismatch(tmp_path):
    pi = write(tmp_path / "imgs", idx_bytes(sample_images(4)))
    pl = write(tmp_path / "labs", idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DatasetError) as e:
        data.read_mnist(pi, pl)
    assert str(pi) in str(e.value) and str(pl) in str(e.value) and "4 images" in str(e.value) and "5 labels" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="nothere: cannot open"):
        data.read_idx(tmp_path / "nothere")


# ------------------------------------------------------------------------------------------ cifar

def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)], b"filenames": [b"x.png"] * n}


def write_cifar(folder, n=3):
    """The cifar-10-batches-py folder (protocol-2 pickles, as the real ones) and its tar.gz; returns the dicts."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_batch(n + i, seed=i)
        (d / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    return batches


def expected_cifar(batches, names):
    x = np.concatenate([batches[n][b"data"] for n in names])
    # The published layout: 1024 red, 1024 green, then 1024 blue values, each plane row-major 32x32.
    planes = np.stack([x[:, 0:1024], x[:, 1024:2048], x[:, 2048:3072]], axis=1).reshape(-1, 3, 32, 32)
    return planes, np.concatenate([batches[n][b"labels"] for n in names])


@pytest.mark.parametrize("from_archive", [False, True])
def test_cifar_folder_and_archive(tmp_path, from_archive):
    batches = write_cifar(tmp_path)
    src = tmp_path / ("cifar-10-python.tar.gz" if from_archive else "cifar-10-batches-py")
    for split, names in [("train", [f"data_batch_{k}" for k in range(1, 6)]), ("test", ["test_batch"])]:
        x, y = data.read_cifar10(src, split)
        ex, ey = expected_cifar(batches, names)
        assert x.dtype == np.uint8 and y.dtype == np.int64
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)


def test_cifar_load_dataset_finds_folder_then_archive(tmp_path):
    batches = write_cifar(tmp_path / "root")
    ds = data.load_dataset("CIFAR-10", "test", data_dir=tmp_path / "root", download=False)
    assert ds.name == "cifar10" and ds.images.shape == (8, 3, 32, 32)
    assert ds.source.endswith("cifar-10-batches-py") and ds.classes[0] == "airplane" and len(ds.mean) == 3
    np.testing.assert_array_equal(ds.labels, batches["test_batch"][b"labels"])
    only_archive = tmp_path / "only"
    only_archive.mkdir()
    os.replace(tmp_path / "root" / "cifar-10-python.tar.gz", only_archive / "cifar-10-python.tar.gz")
    ds = data.load_dataset("cifar10", "train", data_dir=only_archive, download=False)
    assert ds.source.endswith("cifar-10-python.tar.gz") and len(ds) == 3 + 4 + 5 + 6 + 7


def py2_cifar_pickle(x, labels):
    """A batch pickled the way the published files were (Python 2 cPickle, protocol 2): byte strings, and
    numpy arrays by numpy.core.multiarray._reconstruct. Written opcode by opcode, since Python 3 cannot."""
    def s(b):
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
    def i(v):
        return b"K" + bytes([v]) if 0 <= v < 256 else b"M" + struct.pack("<H", v) if 0 <= v < 65536 \
            else b"J" + struct.pack("<i", v)
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(x.shape[0]) + i(x.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
             + b"\x89" + s(x.tobytes()) + b"tb")
    items = s(b"batch_label") + s(b"testing batch 1 of 1") + s(b"data") + array \
        + s(b"labels") + b"](" + b"".join(i(int(v)) for v in labels) + b"e"
    return b"\x80\x02}(" + items + b"u."


def test_cifar_python2_pickle_as_published():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    blob = py2_cifar_pickle(x, [7, 0, 9])
    assert b"numpy.core.multiarray" in blob and b"_codecs" not in blob
    images, labels = data.read_cifar_batch(blob, "data_batch_1")
    np.testing.assert_array_equal(images.reshape(3, 3072), x)
    assert labels.tolist() == [7, 0, 9]


def test_cifar_truncated_pickle(tmp_path):
    blob = pickle.dumps(cifar_batch(4, 0), protocol=2)
    with pytest.raises(DatasetError, match="test_batch: not a readable CIFAR-10 batch pickle"):
        data.read_cifar_batch(blob[: len(blob) // 2], "test_batch")
    with pytest.raises(DatasetError, match="garbage: not a readable CIFAR-10 batch pickle"):
        data.read_cifar_batch(b"\x00not a pickle", "garbage")


def test_cifar_refuses_code_in_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    blob = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load"):
        data.read_cifar_batch(blob, "evil")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("obj, expected", [
    ([1, 2], "expected a dict"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "expected keys b'data' and b'labels'"),
    ({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\), got uint8 array of shape \(2, 3, 32, 32\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "expected b'data' to be a uint8 array"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "holds 2 images but 3 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10 at index 1 is outside 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "list of integers"),
])
def test_cifar_unexpected_structure(obj, expected):
    with pytest.raises(DatasetError, match=expected):
        data.read_cifar_batch(pickle.dumps(obj, protocol=2), "data_batch_1")


def test_cifar_archive_missing_member(tmp_path):
    buf = io.BytesIO(pickle.dumps(cifar_batch(2, 0), protocol=2))
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(buf.getvalue())
        tar.addfile(info, buf)
    with pytest.raises(DatasetError, match="a.tar.gz: archive lacks data_batch_2, data_batch_3"):
        data.read_cifar10(tmp_path / "a.tar.gz", "train")
    (tmp_path / "b.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DatasetError, match="b.tar.gz: not a readable CIFAR-10 archive"):
        data.read_cifar10(tmp_path / "b.tar.gz", "test")


# ------------------------------------------------------------------------------------------ lookup

def test_names_and_aliases():
    for alias in ["fashion-mnist", "fashion_mnist", "FMNIST", "FashionMNIST", "Fashion-MNIST"]:
        assert data.dataset_spec(alias).name == "fashion-mnist"
    assert data.dataset_spec("cifar_10").name == "cifar10"
    with pytest.raises(DatasetError) as e:
        data.load_dataset("imagenet")
    assert "imagenet" in str(e.value) and all(n in str(e.value) for n in ("mnist", "fashion-mnist", "cifar10"))
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        data.load_dataset("mnist", "val")


def test_lookup_order(tmp_path, monkeypatch):
    arg, env, home = tmp_path / "arg", tmp_path / "env", tmp_path / "home"
    debian = tmp_path / "debian"
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setenv("GPUCNN_DATA", str(env))
    write_mnist(debian, n=4, seed=4)
    assert len(data.load_dataset("fashion-mnist", "test", download=False)) == 4
    assert len(data.load_dataset("fashion-mnist", "test", data_dir=arg, download=False)) == 4
    write_mnist(home / ".cache" / "gpucnn" / "fashion-mnist", n=3, seed=3, gz=False)
    ds = data.load_dataset("fashion-mnist", "test", data_dir=arg, download=False)
    assert len(ds) == 3 and ds.source == str(home / ".cache" / "gpucnn" / "fashion-mnist")
    write_mnist(env, n=2, seed=2)
    assert len(data.load_dataset("fashion-mnist", "test", data_dir=arg, download=False)) == 2
    write_mnist(arg, n=1, seed=1)
    assert len(data.load_dataset("fashion-mnist", "test", data_dir=arg, download=False)) == 1
    write_mnist(arg / "fashion-mnist", n=5, seed=5)  # <root>/<name> beats <root> itself
    ds = data.load_dataset("fmnist", "test", data_dir=arg, download=False)
    assert len(ds) == 5 and ds.source == str(arg / "fashion-mnist")
    imgs, labels = write_mnist(tmp_path / "tv" / "FashionMNIST" / "raw", n=6, seed=6)  # torchvision's layout
    ds = data.load_dataset("fashion_mnist", "test", data_dir=tmp_path / "tv", download=False)
    np.testing.assert_array_equal(ds.images[:, 0], imgs)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.classes[0] == "T-shirt/top" and ds.split == "test" and ds.mean == (0.2860,)


def test_lookup_needs_both_files_of_the_split(tmp_path):
    write_mnist(tmp_path / "a", split="train", n=3)
    (tmp_path / "a" / "train-labels-idx1-ubyte.gz").unlink()
    write_mnist(tmp_path / "home" / ".cache" / "gpucnn" / "mnist", split="train", n=7)
    assert len(data.load_dataset("mnist", "train", data_dir=tmp_path / "a", download=False)) == 7


def test_half_a_dataset_is_an_error_not_mixed_with_another_copy(tmp_path):
    """A folder with only the train split must not be paired with the test split of another copy."""
    write_mnist(tmp_path / "a", split="train", n=3)
    write_mnist(tmp_path / "home" / ".cache" / "gpucnn" / "mnist", split="test", n=7)
    assert len(data.load_dataset("mnist", "train", data_dir=tmp_path / "a", download=False)) == 3
    with pytest.raises(DatasetError, match=r"a: holds the train split of mnist but not the test split "
                                           r"\(t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"):
        data.load_dataset("mnist", "test", data_dir=tmp_path / "a", download=False)


def test_corrupt_file_found_is_an_error_not_skipped(tmp_path):
    write_mnist(tmp_path / "home" / ".cache" / "gpucnn" / "mnist", n=7)
    imgs = tmp_path / "a" / "t10k-images-idx3-ubyte.gz"
    write_mnist(tmp_path / "a", n=3)
    imgs.write_bytes(imgs.read_bytes()[:40])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        data.load_dataset("mnist", "test", data_dir=tmp_path / "a", download=False)


def test_not_found_names_every_place_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path / "envdir"))
    monkeypatch.delenv("GPUCNN_MIRROR")
    with pytest.raises(DatasetError) as e:
        data.load_dataset("fashion-mnist", "test", data_dir=tmp_path / "mine", download=False)
    msg = str(e.value)
    for place in [tmp_path / "mine", tmp_path / "envdir", tmp_path / "home" / ".cache" / "gpucnn" / "fashion-mnist",
                  tmp_path / "no-debian"]:
        assert str(place) in msg
    assert "t10k-images-idx3-ubyte" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz" in msg
    assert "--data-dir" in msg and "--no-download" in msg


# ----------------------------------------------------------------------------------------- loader

def indexed_arrays(n, c=1, h=8, w=8):
    """Images whose pixel (0, 0, 0) holds their index, so a batch tells which examples it carries."""
    x = sample_images(n, h, w, c=c, seed=1)
    x[:, 0, 0, 0] = np.arange(n)
    return x, np.arange(n) % 10


def served_indices(loader):
    return [np.rint(backend.to_cpu(x)[:, 0, 0, 0] * 255).astype(int) for x, _ in loader]


def test_each_epoch_covers_the_data_once():
    x, y = indexed_arrays(100)
    loader = DataLoader((x, y), batch_size=32, normalize=False)
    assert len(loader) == 4
    for _ in range(2):
        got = []
        for xb, yb in loader:
            idx = np.rint(xb[:, 0, 0, 0] * 255).astype(int)
            np.testing.assert_array_equal(yb, y[idx])
            np.testing.assert_allclose(xb, x[idx] / 255.0, rtol=1e-6)
            assert xb.dtype == np.float32 and yb.dtype == np.int64
            got.append(idx)
        assert [len(g) for g in got] == [32, 32, 32, 4]
        assert sorted(np.concatenate(got).tolist()) == list(range(100))


def test_order_comes_from_seed_and_epoch():
    x, y = indexed_arrays(50)
    a = DataLoader((x, y), batch_size=50, seed=7, normalize=False)
    e0, e1 = served_indices(a), served_indices(a)
    assert a.epoch == 2
    np.testing.assert_array_equal(e0[0], np.random.default_rng([7, 0]).permutation(50))
    np.testing.assert_array_equal(e1[0], np.random.default_rng([7, 1]).permutation(50))
    assert not np.array_equal(e0[0], e1[0])
    b = DataLoader((x, y), batch_size=50, seed=7, normalize=False)
    b.set_epoch(1)
    np.testing.assert_array_equal(served_indices(b)[0], e1[0])
    np.testing.assert_array_equal(b.order(0), e0[0])
    c = DataLoader((x, y), batch_size=50, seed=8, normalize=False)
    assert not np.array_equal(served_indices(c)[0], e0[0])


def test_no_shuffle_and_drop_last():
    x, y = indexed_arrays(100)
    loader = DataLoader((x, y), batch_size=32, shuffle=False, drop_last=True, normalize=False)
    assert len(loader) == 3
    got = served_indices(loader)
    assert [g.tolist() for g in got] == [list(range(i, i + 32)) for i in (0, 32, 64)]


def test_normalisation_values():
    x = sample_images(20, 6, 5, c=3, seed=3)
    y = np.zeros(20, np.int64)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    xb, _ = next(iter(DataLoader((x, y), batch_size=20, shuffle=False, mean=mean, std=std)))
    ref = (x / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    assert xb.dtype == np.float32
    np.testing.assert_allclose(xb, ref, rtol=1e-5, atol=1e-5)
    xb64, _ = next(iter(DataLoader((x, y), batch_size=20, shuffle=False, mean=mean, std=std, dtype=np.float64)))
    assert xb64.dtype == np.float64
    np.testing.assert_allclose(xb64, ref, rtol=1e-12, atol=1e-12)


def test_statistics_computed_from_arrays_when_not_given():
    x = sample_images(30, 5, 5, c=3, seed=4)
    f = x / 255.0
    mean, std = f.mean(axis=(0, 2, 3)), f.std(axis=(0, 2, 3))
    got_mean, got_std = data.channel_stats(x)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-9)
    np.testing.assert_allclose(got_std, std, rtol=1e-6)
    xb, _ = next(iter(DataLoader((x, np.zeros(30, int)), batch_size=30, shuffle=False)))
    np.testing.assert_allclose(xb.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(xb.std(axis=(0, 2, 3)), 1, atol=1e-5)



@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_a_constant_channel_gets_std_one_and_normalises_to_zero(dtype):
    x = sample_images(12, 5, 4, c=3, seed=5)
    x[:, 2] = 40                                   # an unused colour channel: one value everywhere
    x = x if dtype == np.uint8 else (x / 255.0).astype(np.float32)
    scale = 255.0 if dtype == np.uint8 else 1.0
    mean, std = data.channel_stats(x)
    np.testing.assert_allclose(mean[2], 40 / 255.0, rtol=1e-6)
    assert std[2] == 1.0 and 0 < std[0] < 1 and 0 < std[1] < 1
    np.testing.assert_allclose(std[:2], (x[:, :2] / scale).std(axis=(0, 2, 3)), rtol=1e-6)
    xb, _ = next(iter(DataLoader((x, np.zeros(12, int)), batch_size=12, shuffle=False)))
    assert np.all(np.isfinite(xb)) and np.abs(xb[:, 2]).max() < 1e-6

def test_dataset_constants_are_used():
    x, y = indexed_arrays(10)
    ds = Dataset(x, y, [str(i) for i in range(10)], "t", "train", "", (0.25,), (0.5,))
    xb, _ = next(iter(DataLoader(ds, batch_size=10, shuffle=False)))
    np.testing.assert_allclose(xb, (x / 255.0 - 0.25) / 0.5, rtol=1e-5, atol=1e-6)


def test_limit_and_subset():
    x, y = indexed_arrays(40)
    loader = DataLoader((x, y), batch_size=8, limit=10, normalize=False)
    assert loader.num_examples == 10 and len(loader) == 2
    assert sorted(np.concatenate(served_indices(loader)).tolist()) == list(range(10))
    ds = Dataset(x, y, list("0123456789"))
    assert len(ds.subset(5)) == 5 and ds.subset(100) is ds and ds.subset(None) is ds
    np.testing.assert_array_equal(ds.subset(5).labels, y[:5])


def find_window(out, src, pad):
    """(dy, dx) such that out is the window of the zero-padded src at that offset, or None."""
    h, w = src.shape[-2:]
    padded = np.pad(src, ((0, 0), (pad, pad), (pad, pad)))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            if np.array_equal(padded[:, dy:dy + h, dx:dx + w], out):
                return dy, dx
    return None


def test_crop_is_a_window_of_the_padded_image():
    x, y = indexed_arrays(64, c=2, h=28, w=28)
    x[:, 0, 0, 0] = 255  # a corner mark (the index pixel would be cropped away)
    loader = DataLoader((x, y), batch_size=64, shuffle=False, augment=("crop",), normalize=False)
    assert loader.pad == 2
    xb, _ = next(iter(loader))
    assert xb.shape == (64, 2, 28, 28)
    offsets = set()
    for i in range(64):
        off = find_window(np.rint(xb[i] * 255).astype(np.uint8), x[i], 2)
        assert off is not None
        offsets.add(off)
    assert len(offsets) > 5
    assert DataLoader((sample_images(2, 32, 32, c=3), [0, 1]), augment="crop").pad == 4


def test_flip_mirrors_about_half():
    x, y = indexed_arrays(200, h=6, w=7)
    xb, _ = next(iter(DataLoader((x, y), batch_size=200, shuffle=False, augment="flip", normalize=False)))
    got = np.rint(xb * 255).astype(np.uint8)
    same = np.array([np.array_equal(got[i], x[i]) for i in range(200)])
    mirrored = np.array([np.array_equal(got[i], x[i, :, :, ::-1]) for i in range(200)])
    assert np.all(same | mirrored)
    assert 60 < mirrored.sum() < 140


def test_augmentation_is_deterministic_per_epoch():
    x, y = indexed_arrays(48, c=3, h=32, w=32)
    make = lambda: DataLoader((x, y), batch_size=16, seed=3, augment=("crop", "flip"))
    a, b = make(), make()
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (16, 3, 32, 32)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    b.set_epoch(0)
    first_b = [xb for xb, _ in b]
    c = make()
    c.set_epoch(1)
    assert not np.array_equal(next(iter(c))[0], first_b[0])
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(48))  # the dataset itself is untouched


def test_emulated_device_yields_device_arrays():
    x, y = indexed_arrays(10)
    xb, yb = next(iter(DataLoader((x, y), batch_size=4, device="emulated", augment=("crop", "flip"))))
    assert isinstance(xb, backend.EmulatedArray) and isinstance(yb, backend.EmulatedArray)
    assert xb.dtype == np.float32 and yb.dtype == np.int64 and xb.shape == (4, 1, 8, 8)


def test_device_arrays_are_read_back_once_and_served_like_host_arrays():
    x, y = indexed_arrays(10)
    dx, dy = backend.to_device(x, "emulated"), backend.to_device(y, "emulated")
    with backend.count_device_ops() as c:
        loader = DataLoader((dx, dy), batch_size=4, shuffle=False, device="cpu")
    assert c.device_to_host == 2
    for (a, la), (b, lb) in zip(loader, DataLoader((x, y), batch_size=4, shuffle=False, device="cpu")):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_loader_argument_errors():
    x, y = indexed_arrays(4)
    with pytest.raises(ValueError, match="unknown augmentation"):
        DataLoader((x, y), augment=("rotate",))
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\), got shape \(4, 8, 8\)"):
        DataLoader((x[:, 0], y))
    with pytest.raises(ValueError, match=r"integer labels of shape \(4,\)"):
        DataLoader((x, y[:3]))
    with pytest.raises(TypeError, match="Dataset or an \\(images, labels\\) pair"):
        DataLoader(x)


# -------------------------------------------------------------------------------------- real data

@pytest.mark.skipif(not os.path.isdir(REAL_FASHION),
                    reason=f"{REAL_FASHION} is absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian_package():
    test = data.load_dataset("fashion-mnist", "test", data_dir=REAL_FASHION, download=False)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [1000] * 10
    train = data.load_dataset("fashion-mnist", "train", data_dir=REAL_FASHION, download=False)
    assert train.images.shape == (60000, 1, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    x = train.images.ravel()  # exact integer sums
    mean = x.sum(dtype=np.int64) / x.size / 255
    wide = x.astype(np.uint32)
    std = np.sqrt((wide * wide).sum(dtype=np.int64) / x.size / 255**2 - mean**2)
    assert abs(mean - train.mean[0]) < 5e-4 and abs(std - train.std[0]) < 5e-4  # the published constants
