"""Your own data: .npz files (layouts, dtypes, splits) and image folders (PNG/JPEG, class subfolders, splits),
each problem a DatasetError naming the file; your own model from a file or a module."""
import numpy as np
import pytest

from _synth import write_image_folder, write_model_file, write_npz_dataset
from gpucnn import data, models
from gpucnn.data import DatasetError


@pytest.mark.parametrize("layout,shape", [("NHWC", (5, 12, 12, 3)), ("NCHW", (5, 3, 12, 12)), ("NHWC", (5, 12, 12, 1)),
                                          (None, (5, 12, 12))])
def test_npz_layouts_become_nchw(tmp_path, layout, shape):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, shape).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(5) % 2)
    ds = data.load_dataset(tmp_path / "d.npz")
    expected = x[:, None] if x.ndim == 3 else (x.transpose(0, 3, 1, 2) if layout == "NHWC" else x)
    np.testing.assert_array_equal(ds.images, expected)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64 and ds.classes == ["0", "1"]
    assert (ds.name, ds.split) == ("d", "train")


def test_npz_float_images_splits_and_class_names(tmp_path):
    path = write_npz_dataset(tmp_path / "f.npz", n_train=20, n_test=6, layout="NCHW", classes=3)
    z = dict(np.load(path))
    z["x_train"] = z["x_train"].astype(np.float64) / 255
    z["classes"] = np.array(["ant", "bee", "cat"])
    z["x_val"], z["y_val"] = z["x_test"][:2], z["y_test"][:2]
    np.savez(path, **z)
    train, test = data.load_dataset(path), data.load_dataset(path, "test")
    assert train.images.dtype == np.float32 and test.images.dtype == np.uint8
    assert train.classes == test.classes == ["ant", "bee", "cat"] and len(test) == 6
    assert data.has_split(path, "val") and len(data.load_dataset(path, "val")) == 2


@pytest.mark.parametrize("arrays,message", [
    ({"x_train": np.zeros((4, 3, 4, 3), np.uint8)}, r"cannot tell whether shape \(4, 3, 4, 3\) is NCHW or NHWC "
                                                    r"\(axes 1 and 3 are both 1, 3 or 4 long\); save the file with "
                                                    r"layout='NCHW' or layout='NHWC'"),
    ({"x_train": np.zeros((4, 16, 8, 8), np.uint8)}, r"are neither 1, 3 or 4 long"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.eye(4)}, r"y_train: expected labels of shape "
                                                                       r"\(N,\), got shape \(4, 4\).*not one-hot"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.arange(4.0)}, r"float labels with integer values: "
                                                                            r"store them with y.astype"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.array([0, 1, -1, 2])}, r"negative label -1"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.arange(3)}, r"holds 4 images but y_train holds 3"),
    ({"x_train": np.full((4, 8, 8), np.nan, np.float32)}, r"NaN or infinite pixel values"),
    ({"x_train": np.full((4, 8, 8), 255.0, np.float32)}, r"x_train: images that are not uint8 are taken as pixel "
                                                          r"values scaled to \[0, 1\], but these range from 255 to "
                                                          r"255: divide 0-255 values by 255"),
    ({"x_train": np.linspace(-1.5, 2, 256).reshape(4, 8, 8)}, r"range from -1.5 to 2: .*before any normalisation"),
    ({"x_train": np.full((4, 8, 8), 1000, np.int16)}, r"range from 1000 to 1000"),
    ({"images": np.zeros((4, 8, 8), np.uint8)}, r"expected arrays x_train and y_train .*got images"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.arange(4), "classes": np.array(["a", "b"])},
     r"a label is 3, but 'classes' names only 2 classes"),
])
def test_npz_problems_name_the_file_and_what_to_do(tmp_path, arrays, message):
    arrays = {"y_train": np.arange(4), **arrays}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=r"bad\.npz.*" + message):
        data.load_dataset(tmp_path / "bad.npz")


def test_a_file_that_is_not_an_npz_is_named_as_such(tmp_path):
    (tmp_path / "notes.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(DatasetError, match=r"notes\.npz: not a readable \.npz file \(ValueError: not a zip archive "
                                           r"as np\.savez writes \(it starts with b'x_tr'\)\)$"):
        data.load_dataset(tmp_path / "notes.npz")


def test_npz_layout_entry_settles_ambiguity_and_missing_splits_are_named(tmp_path):
    x = np.arange(4 * 3 * 4 * 3).reshape(4, 3, 4, 3).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(4), layout="NHWC")
    np.testing.assert_array_equal(data.load_dataset(tmp_path / "d.npz").images, x.transpose(0, 3, 1, 2))
    assert not data.has_split(tmp_path / "d.npz", "test")
    with pytest.raises(DatasetError, match=r"d\.npz: has no test split \(no x_test array\)"):
        data.load_dataset(tmp_path / "d.npz", "test")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"junk\.npz: not a readable \.npz file"):
        data.load_dataset(tmp_path / "junk.npz")
    with pytest.raises(DatasetError, match=r"nothere\.npz: no such file or folder"):
        data.load_dataset(tmp_path / "nothere.npz")


def test_names_and_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()                                  # a folder named like a built-in data set
    assert not data.is_own_data("mnist") and not data.is_own_data("Fashion_MNIST")
    assert data.is_own_data("./mnist") and data.is_own_data("my.npz") and data.is_own_data(tmp_path / "x")
    with pytest.raises(DatasetError, match=r"unknown dataset 'imagenet'.*or a path to an \.npz file or an image "
                                           r"folder"):
        data.load_dataset("imagenet")


def test_image_folder_with_classes_as_subfolders(tmp_path):
    root = write_image_folder(tmp_path / "shapes", per_class=4, classes=("b_cross", "a_circle"))
    ds = data.load_dataset(root)
    assert ds.classes == ["a_circle", "b_cross"]                  # sorted, as torchvision's ImageFolder
    assert ds.images.shape == (8, 1, 12, 12) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, [0] * 4 + [1] * 4)
    assert ds.images[0, 0, :4, 4:8].min() > 200                  # a_circle is drawn as class 1 (cell 1)
    assert not data.has_split(root, "test")
    with pytest.raises(DatasetError, match=r"shapes: has no test split \(a test/ folder beside train/"):
        data.load_dataset(root, "test")


def test_image_folder_with_train_and_test_splits_and_colour(tmp_path):
    root = write_image_folder(tmp_path / "s", per_class=3, splits=("train", "test"), rgb=True)
    train, test = data.load_dataset(root), data.load_dataset(root, "test")
    assert train.images.shape == (9, 3, 12, 12) and test.images.shape == (9, 3, 12, 12)
    assert train.classes == test.classes == ["circle", "cross", "dot"]
    # one grayscale image among colour ones is made RGB
    from PIL import Image
    Image.fromarray(np.full((12, 12), 99, np.uint8), "L").save(tmp_path / "s" / "train" / "dot" / "gray.png")
    ds = data.load_dataset(root)
    assert ds.images.shape == (10, 3, 12, 12)
    assert (ds.images[-1] == 99).all()                           # "gray.png" sorts last in dot/, in all 3 channels


@pytest.mark.parametrize("defect,message", [
    ("corrupt", r"cross/03\.png: not a readable PNG or JPEG image"),
    ("size", r"cross/03\.png: is 10x12 pixels, but .*circle/00\.png is 12x12; all images must have one size"),
    ("other file", r"cross/notes\.txt: expected PNG or JPEG files"),
    ("empty class", r"empty: class folder holds no images"),
    ("no classes", r"expected one subfolder per class"),
])
def test_image_folder_problems_name_the_file(tmp_path, defect, message):
    from PIL import Image
    root = tmp_path / "imgs"
    if defect == "no classes":
        root.mkdir()
        (root / "a.png").write_bytes(b"")
    else:
        write_image_folder(root, per_class=4)
    if defect == "corrupt":
        (root / "cross" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    elif defect == "size":
        Image.fromarray(np.zeros((12, 10), np.uint8), "L").save(root / "cross" / "03.png")
    elif defect == "other file":
        (root / "cross" / "notes.txt").write_text("x")
    elif defect == "empty class":
        (root / "empty").mkdir()
    (root / ".DS_Store").write_bytes(b"ignored")                  # hidden files are skipped
    with pytest.raises(DatasetError, match=message):
        data.load_dataset(root)


def test_image_folders_without_pillow_say_how_to_get_it(tmp_path, monkeypatch):
    import sys
    root = write_image_folder(tmp_path / "i", per_class=1)
    monkeypatch.setitem(sys.modules, "PIL", None)                 # as if Pillow were not installed
    with pytest.raises(DatasetError, match=r"needs Pillow: pip install 'gpucnn\[images\]'"):
        data.load_dataset(root)


def test_own_model_from_a_file_or_a_module(tmp_path, monkeypatch):
    path = write_model_file(tmp_path)
    net = models.build(f"{path}:build", in_channels=1, input_size=12, num_classes=4)
    assert net.output_shape((2, 1, 12, 12)) == (2, 4)
    monkeypatch.chdir(tmp_path)
    assert models.build("my_net:build", in_channels=3, input_size=(8, 6), num_classes=2).output_shape(
        (1, 3, 8, 6)) == (1, 2)
    assert models.is_spec("my_net.py:build") and models.is_spec("pkg.mod:f") and not models.is_spec("lenet5")
    assert not models.is_spec("C:\\data")
    for spec, message in [("nothere.py:build", r"no such file .*nothere\.py"),
                          ("my_net.py:missing", r"my_net\.py defines no function 'missing' \(it defines: build, "
                                                r"no_layer\)"),
                          ("no_such_module:build", r"no module named 'no_such_module'"),
                          ("my_net.py:no_layer", r"returned list, expected a gpucnn Layer")]:
        with pytest.raises(ValueError, match=message):
            models.build(spec, in_channels=1, input_size=12, num_classes=4)


def test_own_model_with_parameters_gpucnn_cannot_pass_is_a_clear_error(tmp_path):
    (tmp_path / "nets.py").write_text(
        "import gpucnn\n"
        "def wrong_names(channels, classes):\n    raise AssertionError('must not be called')\n"
        "def positional_only(in_channels, /):\n    raise AssertionError('must not be called')\n"
        "def with_defaults(in_channels, width=8, *, num_classes, depth=2):\n"
        "    return gpucnn.Sequential(gpucnn.Flatten(), gpucnn.Affine(in_channels * 16, num_classes))\n")
    for func, missing in [("wrong_names", "channels, classes"), ("positional_only", "in_channels")]:
        with pytest.raises(ValueError, match=rf"nets\.py:{func}: the function requires {missing}, which gpucnn "
                                             rf"cannot pass: it passes those of in_channels, input_size, num_classes"):
            models.build(f"{tmp_path / 'nets.py'}:{func}", in_channels=1, input_size=4, num_classes=3)
    net = models.build(f"{tmp_path / 'nets.py'}:with_defaults", in_channels=2, input_size=4, num_classes=3)
    assert net.output_shape((5, 2, 4, 4)) == (5, 3)
