"""Tests for dp_sinkhorn_tf.data.sources: the user's own sources on generated files only
(PNG / JPEG / BMP / GIF written by TensorFlow and Pillow, npz, TFRecords, a tiny TFDS builder
prepared in a temporary directory)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from dp_sinkhorn_tf.data import sources
from dp_sinkhorn_tf.data import spec as data_spec

RNG = np.random.default_rng(0)


def _pixels(h=8, w=8, c=3, seed=None):
  rng = RNG if seed is None else np.random.default_rng(seed)
  return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as fh:
    fh.write(tf.io.encode_png(array).numpy())


def write_pil(path, array, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
  image.save(path, fmt)


def opts(**kwargs):
  return sources.Options(**kwargs)


def folder(path, **kwargs):
  return sources.load_folder(str(path), opts(**kwargs))


# ---- folder: layout, labels, formats -----------------------------------------------------

def test_class_folders_become_sorted_labels_and_png_pixels_survive_exactly(tmp_path):
  images = {}
  for cls in ("owl", "cat", "dog"):  # written unsorted: labels follow the sorted names
    for i in range(2):
      images[f"{cls}/{i}.png"] = _pixels()
      write_png(str(tmp_path / cls / f"{i}.png"), images[f"{cls}/{i}.png"])
  loaded = folder(tmp_path)
  assert loaded.label_names == ("cat", "dog", "owl") and loaded.labelled
  assert loaded.pixels.shape == (6, 8, 8, 3) and loaded.pixels.dtype == np.uint8
  # Files in sorted path order: cat/0, cat/1, dog/0, dog/1, owl/0, owl/1.
  np.testing.assert_array_equal(loaded.labels, [0, 0, 1, 1, 2, 2])
  for i, name in enumerate(sorted(images)):
    np.testing.assert_array_equal(loaded.pixels[i], images[name])
  assert loaded.groups is None and loaded.notes == ()


def test_a_folder_without_sub_folders_is_one_unlabelled_class(tmp_path):
  for i in range(3):
    write_png(str(tmp_path / f"{i}.png"), _pixels(c=1))
  loaded = folder(tmp_path)
  assert loaded.label_names == (sources.UNLABELLED_NAME,) and not loaded.labelled
  assert loaded.pixels.shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(loaded.labels, [0, 0, 0])


def test_png_jpeg_bmp_and_gif_grayscale_and_rgb_all_decode(tmp_path):
  rgb, gray = _pixels(seed=1), _pixels(c=1, seed=2)
  write_png(str(tmp_path / "a" / "0.png"), rgb)
  write_pil(str(tmp_path / "a" / "1.bmp"), rgb, "BMP")
  write_pil(str(tmp_path / "a" / "2.gif"), rgb, "GIF")
  jpeg = tf.io.encode_jpeg(rgb, quality=90).numpy()
  with open(tmp_path / "a" / "3.JPG", "wb") as fh:  # the suffix in any case
    fh.write(jpeg)
  # RGBA: the alpha channel is dropped.
  write_pil(str(tmp_path / "a" / "4.png"), np.concatenate([rgb, rgb[..., :1]], -1), "PNG")
  loaded = folder(tmp_path)
  assert loaded.pixels.shape == (5, 8, 8, 3)
  np.testing.assert_array_equal(loaded.pixels[1], rgb)  # BMP: lossless
  np.testing.assert_array_equal(loaded.pixels[4], rgb)  # RGBA PNG minus alpha
  np.testing.assert_array_equal(loaded.pixels[3], tf.io.decode_jpeg(jpeg).numpy())
  write_png(str(tmp_path / "g" / "0.png"), gray)
  write_pil(str(tmp_path / "g" / "1.bmp"), gray, "BMP")
  grays = folder(tmp_path / "g")
  assert grays.pixels.shape == (2, 8, 8, 1)
  np.testing.assert_array_equal(grays.pixels[1], gray)


def test_channels_convert_gray_to_rgb_and_rgb_to_gray(tmp_path):
  gray, rgb = _pixels(c=1, seed=3), _pixels(seed=4)
  write_png(str(tmp_path / "0.png"), gray)
  write_png(str(tmp_path / "1.png"), rgb)
  loaded = folder(tmp_path, channels=3)
  np.testing.assert_array_equal(loaded.pixels[0], np.repeat(gray, 3, -1))
  np.testing.assert_array_equal(loaded.pixels[1], rgb)
  grayed = folder(tmp_path, channels=1)
  # ITU-R 601 luma, TF's rgb_to_grayscale weights, rounded.
  luma = rgb.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
  assert np.abs(grayed.pixels[1, ..., 0].astype(int) - np.round(luma)).max() <= 1
  np.testing.assert_array_equal(grayed.pixels[0], gray)


def test_image_size_crops_to_the_aspect_ratio_and_resizes(tmp_path):
  # 8×16: 4 white columns, 8 black, 4 white. To 8×8 the centred 8×8 crop is the black
  # middle: no distortion, no white.
  image = np.zeros((8, 16, 1), np.uint8)
  image[:, :4] = image[:, 12:] = 255
  write_png(str(tmp_path / "0.png"), image)
  flat = np.full((16, 16, 1), 77, np.uint8)  # a constant image stays that constant
  write_png(str(tmp_path / "1.png"), flat)
  same = _pixels(8, 8, 1, seed=5)  # already the target size: not resampled
  write_png(str(tmp_path / "2.png"), same)
  loaded = folder(tmp_path, size=(8, 8))
  np.testing.assert_array_equal(loaded.pixels[0], np.zeros((8, 8, 1)))
  np.testing.assert_array_equal(loaded.pixels[1], np.full((8, 8, 1), 77))
  np.testing.assert_array_equal(loaded.pixels[2], same)
  # Downscaling is antialiased: a 1-pixel checkerboard averages to mid grey, not aliasing
  # to black or white.
  checker = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)[..., None]
  write_png(str(tmp_path / "c" / "0.png"), checker)
  down = folder(tmp_path / "c", size=(8, 8))
  assert np.abs(down.pixels[0, 1:-1, 1:-1].astype(int) - 128).max() <= 1
  assert np.abs(down.pixels.astype(int) - 128).max() <= 4  # the border pixels


# ---- folder: bad data ------------------------------------------------------------------

def test_an_empty_folder_and_a_missing_folder_are_one_line(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"^--data=folder:.*empty: no images \(PNG, JPG"):
    folder(tmp_path / "empty")
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "README.txt").write_text("no images here")
  with pytest.raises(ValueError, match="no images"):
    folder(tmp_path / "notes")
  with pytest.raises(sources.DataNotFoundError, match="no such directory"):
    folder(tmp_path / "nope")


def test_a_class_folder_with_no_image_is_refused(tmp_path):
  write_png(str(tmp_path / "cat" / "0.png"), _pixels())
  (tmp_path / "dog").mkdir()
  (tmp_path / "dog" / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="class folder 'dog' holds no image"):
    folder(tmp_path)


@pytest.mark.parametrize("name,payload", [
    ("bad.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),   # a PNG signature, garbage after
    ("half.png", None),                                 # a truncated PNG
    ("half.jpg", None),                                 # a truncated JPEG
    ("text.png", b"this is not an image"),              # not an image, image suffix
])
def test_a_corrupt_or_truncated_image_is_refused_naming_the_file(tmp_path, name, payload):
  for i in range(3):
    write_png(str(tmp_path / "a" / f"{i}.png"), _pixels())
  if payload is None:
    encode = tf.io.encode_jpeg if name.endswith(".jpg") else tf.io.encode_png
    whole = encode(_pixels(16, 16, 3)).numpy()
    payload = whole[:len(whole) // 2]
  (tmp_path / "a" / name).write_bytes(payload)
  with pytest.raises(ValueError, match=rf"a/{name}: not a decodable image .*1 such file"):
    folder(tmp_path)


def test_several_bad_images_are_counted(tmp_path):
  write_png(str(tmp_path / "0.png"), _pixels())
  for i in (1, 2, 3):
    (tmp_path / f"{i}.png").write_bytes(b"junk")
  with pytest.raises(ValueError, match="1.png: not a decodable image .*3 such file"):
    folder(tmp_path)


def test_files_without_an_image_suffix_are_skipped_and_counted(tmp_path):
  for i in range(2):
    write_png(str(tmp_path / "a" / f"{i}.png"), _pixels())
  (tmp_path / "a" / "notes.txt").write_text("x")
  (tmp_path / "Thumbs.db").write_bytes(b"\x00")
  (tmp_path / "a" / ".hidden.png").write_bytes(b"junk")  # hidden: skipped, not decoded
  loaded = folder(tmp_path)
  assert len(loaded.pixels) == 2
  assert len(loaded.notes) == 1 and "skipped 3 file(s)" in loaded.notes[0]


def test_a_hidden_folder_is_skipped_and_counted(tmp_path):
  write_png(str(tmp_path / "dog" / "0.png"), _pixels())
  write_png(str(tmp_path / "dog" / ".thumbs" / "c.png"), _pixels())
  loaded = folder(tmp_path)
  assert len(loaded.pixels) == 1
  assert len(loaded.notes) == 1 and "skipped 1 file(s)" in loaded.notes[0]
  assert "dog/.thumbs/" in loaded.notes[0]


def test_links_are_followed_but_an_image_reached_twice_is_refused(tmp_path):
  data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
  write_png(str(elsewhere / "cats" / "0.png"), _pixels(seed=1))
  write_png(str(data / "dog" / "0.png"), _pixels(seed=2))
  os.symlink(elsewhere / "cats", data / "cat")  # a class folder linked in: fine
  loaded = folder(data)
  assert loaded.label_names == ("cat", "dog") and len(loaded.pixels) == 2
  # The same folder linked in twice: each of its images would be two records.
  os.symlink(elsewhere / "cats", data / "kitten")
  with pytest.raises(ValueError, match=r"kitten and cat are the same folder \(a link\)"):
    folder(data)
  os.remove(data / "kitten")
  # A link to a folder above it: without the check, an endless walk.
  os.symlink(data, data / "dog" / "up")
  with pytest.raises(ValueError, match=r"dog/up and \. are the same folder"):
    folder(data)
  os.remove(data / "dog" / "up")
  # One file under two names (a hard link): refused as well.
  os.link(data / "dog" / "0.png", data / "dog" / "1.png")
  with pytest.raises(ValueError, match=r"dog/1.png and dog/0.png are the same file"):
    folder(data)
  os.remove(data / "dog" / "1.png")
  os.symlink(tmp_path / "gone.png", data / "dog" / "2.png")  # a broken link: one line
  with pytest.raises(ValueError, match=r"dog/2.png: cannot read it \(No such file"):
    folder(data)


def test_mixed_sizes_need_image_size(tmp_path):
  write_png(str(tmp_path / "a.png"), _pixels(8, 8))
  write_png(str(tmp_path / "b.png"), _pixels(10, 8))
  with pytest.raises(ValueError, match=r"b.png: 10×8 pixels where the first image has 8×8: "
                     r"pass --image_size"):
    folder(tmp_path)
  assert folder(tmp_path, size=(8, 8)).pixels.shape == (2, 8, 8, 3)


def test_of_several_misfits_the_lowest_numbered_is_named_whatever_the_read_order(tmp_path):
  for i in range(300):
    write_png(str(tmp_path / f"{i:03d}.png"), _pixels(10 if i in (150, 290) else 8, 8, seed=i))
  with pytest.raises(ValueError, match=r"150.png: 10×8 pixels where the first image has 8×8"):
    folder(tmp_path)


def test_mixed_grayscale_and_colour_need_channels(tmp_path):
  write_png(str(tmp_path / "a.png"), _pixels(c=1))
  write_png(str(tmp_path / "b.png"), _pixels(c=3))
  with pytest.raises(ValueError, match="b.png: colour where the first image is grayscale: "
                     "pass --channels"):
    folder(tmp_path)
  assert folder(tmp_path, channels=3).pixels.shape == (2, 8, 8, 3)


def test_an_image_beside_class_folders_is_refused(tmp_path):
  write_png(str(tmp_path / "cat" / "0.png"), _pixels())
  write_png(str(tmp_path / "stray.png"), _pixels())
  with pytest.raises(ValueError, match="stray.png: an image beside the class folders"):
    folder(tmp_path)


def test_sizes_the_generators_cannot_build_name_the_flags(tmp_path):
  write_png(str(tmp_path / "a.png"), _pixels(200, 8))
  with pytest.raises(ValueError, match=r"200×8 pixels \(the generators take 8 to 128 .*"
                     r"--image_size"):
    folder(tmp_path)
  assert folder(tmp_path, size=(16, 16)).pixels.shape == (1, 16, 16, 3)


def test_the_memory_check_runs_before_decoding(tmp_path):
  write_png(str(tmp_path / "a.png"), _pixels())
  (tmp_path / "b.png").write_bytes(b"junk")  # never decoded: the check comes first
  seen = []

  def check(n, shape, what):
    seen.append((n, tuple(shape)))
    raise ValueError(f"{what}: too big")

  with pytest.raises(ValueError, match="too big"):
    folder(tmp_path, size=(16, 12), channels=1, check_memory=check)
  assert seen == [(2, (16, 12, 1))]
  # npz: the file's own array is held beside the resized one, so both sizes are checked.
  seen.clear()
  np.savez(tmp_path / "big.npz", images=np.zeros((3, 64, 64), np.uint8))
  with pytest.raises(ValueError, match="too big"):
    sources.load_npz(str(tmp_path / "big.npz"), opts(size=(32, 32), check_memory=check))
  assert seen == [(3, (32, 32, 1))]  # the first check raised; the next one is the original's
  seen.clear()
  calls = []
  sources.load_npz(str(tmp_path / "big.npz"), opts(size=(32, 32), check_memory=lambda n, shape,
                                                    what: calls.append(tuple(shape))))
  assert calls == [(32, 32, 1), (64, 64, 1)]


# ---- folder: groups ----------------------------------------------------------------------

def _grouped_folder(root):
  for cls in ("cat", "dog"):
    for person in ("ann", "bob"):
      for i in range(2):
        write_png(str(root / cls / person / f"{i}.png"), _pixels())


def test_groups_from_sub_folders_below_the_classes(tmp_path):
  _grouped_folder(tmp_path)
  loaded = folder(tmp_path, group_unit=True, groups=data_spec.GROUPS_SUBFOLDERS)
  assert loaded.label_names == ("cat", "dog")
  # cat/ann/0, cat/ann/1, cat/bob/0, …: groups by sorted name ann=0, bob=1.
  np.testing.assert_array_equal(loaded.labels, [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(loaded.groups, [0, 0, 1, 1, 0, 0, 1, 1])
  flat = tmp_path / "flat"
  for person in ("zoe", "al"):
    write_png(str(flat / person / "0.png"), _pixels())
  loaded = folder(flat, group_unit=True, groups=data_spec.GROUPS_SUBFOLDERS)
  assert not loaded.labelled and list(loaded.groups) == [0, 1]  # al, zoe


def test_groups_from_a_csv(tmp_path):
  _grouped_folder(tmp_path)
  csv_path = tmp_path / "groups.csv"
  rows = ["group,file"] + [f"{'p1' if i == '0' else 'p2'},{c}/{p}/{i}.png"
                           for c in ("cat", "dog") for p in ("ann", "bob") for i in "01"]
  csv_path.write_text("\n".join(rows) + "\n")
  loaded = folder(tmp_path, group_unit=True, groups=str(csv_path))
  np.testing.assert_array_equal(loaded.groups, [0, 1, 0, 1, 0, 1, 0, 1])
  # A row naming a file that is not an image of the folder.
  csv_path.write_text("\n".join(rows + ["p3,cat/ann/missing.png"]) + "\n")
  with pytest.raises(ValueError, match=r"--groups=.*groups.csv: row 10 names "
                     r"'cat/ann/missing.png', which is not an image of folder:"):
    folder(tmp_path, group_unit=True, groups=str(csv_path))
  # An image without a group.
  csv_path.write_text("\n".join(rows[:-1]) + "\n")
  with pytest.raises(ValueError, match=r"1 image\(s\) of folder:.* have no group, e.g. "
                     "dog/bob/1.png"):
    folder(tmp_path, group_unit=True, groups=str(csv_path))
  # A file named twice (even with the same group), or an empty group.
  csv_path.write_text("\n".join(rows + [rows[1]]) + "\n")
  with pytest.raises(ValueError, match=r"row 10 names cat/ann/0.png again: one row per image"):
    folder(tmp_path, group_unit=True, groups=str(csv_path))
  csv_path.write_text("\n".join(rows[:-1] + [",dog/bob/1.png"]) + "\n")
  with pytest.raises(ValueError, match=r"row 9 gives dog/bob/1.png an empty group"):
    folder(tmp_path, group_unit=True, groups=str(csv_path))
  csv_path.write_text("path,who\nx,y\n")
  with pytest.raises(ValueError, match="first row names the columns 'file' and 'group'"):
    folder(tmp_path, group_unit=True, groups=str(csv_path))
  with pytest.raises(FileNotFoundError, match="--groups=.*nope.csv: cannot read"):
    folder(tmp_path, group_unit=True, groups=str(tmp_path / "nope.csv"))


def test_sub_folder_groups_need_images_in_group_folders(tmp_path):
  write_png(str(tmp_path / "loose.png"), _pixels())
  write_png(str(tmp_path / "ann" / "0.png"), _pixels())
  with pytest.raises(ValueError, match="loose.png: directly in the folder"):
    folder(tmp_path, group_unit=True, groups=data_spec.GROUPS_SUBFOLDERS)
  os.remove(tmp_path / "loose.png")
  os.remove(tmp_path / "ann" / "0.png")
  os.rmdir(tmp_path / "ann")
  write_png(str(tmp_path / "cat" / "bob" / "0.png"), _pixels())
  write_png(str(tmp_path / "cat" / "x.png"), _pixels())  # in a class, in no group
  with pytest.raises(ValueError, match=r"cat/x.png: not in a group sub-folder; "
                     r"--groups=subfolders reads PATH/<class>/<group>/<image>"):
    folder(tmp_path, group_unit=True, groups=data_spec.GROUPS_SUBFOLDERS)


# ---- held-out sets of a trained model (like_names) ---------------------------------------

def test_held_out_classes_are_matched_by_name(tmp_path):
  write_png(str(tmp_path / "owl" / "0.png"), _pixels())  # a subset of the model's classes
  write_png(str(tmp_path / "cat" / "0.png"), _pixels())
  loaded = folder(tmp_path, like_names=("cat", "dog", "owl"))
  np.testing.assert_array_equal(loaded.labels, [0, 2])  # cat → 0, owl → 2, not 0 and 1
  assert loaded.label_names == ("cat", "dog", "owl")
  write_png(str(tmp_path / "emu" / "0.png"), _pixels())
  with pytest.raises(ValueError, match="class 'emu' is not one of the model's classes"):
    folder(tmp_path, like_names=("cat", "dog", "owl"))
  # An unconditional model's held-out set: every image is class 0, sub-folders or not.
  one = folder(tmp_path, like_names=("all",), like_labelled=False)
  assert not one.labelled and list(one.labels) == [0, 0, 0]


def test_a_held_out_npz_with_label_names_is_matched_by_name(tmp_path):
  images = np.zeros((3, 8, 8), np.uint8)
  np.savez(tmp_path / "h.npz", images=images, labels=np.array([0, 1, 1]),
           label_names=np.array(["owl", "cat"]))  # another order than the model's
  loaded = sources.load_npz(str(tmp_path / "h.npz"), opts(like_names=("cat", "dog", "owl")))
  assert list(loaded.labels) == [2, 0, 0] and loaded.label_names == ("cat", "dog", "owl")
  np.savez(tmp_path / "u.npz", images=images, labels=np.array([0, 1, 1]),
           label_names=np.array(["owl", "emu"]))
  with pytest.raises(ValueError, match="class 'emu' is not one of the model's classes"):
    sources.load_npz(str(tmp_path / "u.npz"), opts(like_names=("cat", "dog", "owl")))
  np.savez(tmp_path / "n.npz", images=images, labels=np.array([0, 2, 1]))  # no names: by index
  assert list(sources.load_npz(str(tmp_path / "n.npz"),
                               opts(like_names=("cat", "dog", "owl"))).labels) == [0, 2, 1]


# ---- npz ---------------------------------------------------------------------------------

def test_npz_with_labels_and_names(tmp_path):
  images = RNG.integers(0, 256, (5, 8, 8), dtype=np.uint8)
  np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 1, 2, 0]),
           label_names=np.array(["a", "b", "c"]))
  loaded = sources.load_npz(str(tmp_path / "d.npz"), opts())
  assert loaded.pixels.shape == (5, 8, 8, 1) and loaded.label_names == ("a", "b", "c")
  np.testing.assert_array_equal(loaded.pixels[..., 0], images)
  assert loaded.labels.dtype == np.int32 and list(loaded.labels) == [0, 1, 1, 2, 0]
  np.savez(tmp_path / "u.npz", images=images[..., None].repeat(3, -1))
  unlabelled = sources.load_npz(str(tmp_path / "u.npz"), opts(size=(16, 16)))
  assert not unlabelled.labelled and unlabelled.pixels.shape == (5, 16, 16, 3)
  np.savez(tmp_path / "n.npz", images=images, labels=np.array([0, 3, 3, 1, 0]))
  assert sources.load_npz(str(tmp_path / "n.npz"), opts()).label_names == ("0", "1", "2", "3")
  np.savez(tmp_path / "b.npz", images=images, labels=np.array([0, 1, 1, 2, 0]),
           label_names=np.array([b"a", b"b", b"c"]))  # bytes names read as text
  assert sources.load_npz(str(tmp_path / "b.npz"), opts()).label_names == ("a", "b", "c")


NAMES = np.array(["a", "b", "c"])


@pytest.mark.parametrize("arrays,match", [
    ({"labels": np.array([0, 1, 2, 3, 0]), "label_names": NAMES},
     r"labels: label 3 outside \[0, 3\) \(3 label names\)"),
    ({"labels": np.array([0, -1, 1, 1, 0])}, r"labels: label -1 outside \[0, 2\)"),
    ({"labels": np.array([0.0, 1, 1, 1, 0])}, "labels must be integers"),
    ({"labels": np.array([0, 1])}, r"labels must be integers \[5\]"),
    ({"labels": np.array([0, 1, 1, 1, 0]), "label_names": np.array([1, 2])},
     "label_names must be strings"),
    ({"labels": np.array([0, 1, 1, 10**9, 0])},
     r"labels: label 1000000000 makes 1000000001 classes for 5 records"),
])
def test_npz_labels_out_of_range_or_malformed_are_refused(tmp_path, arrays, match):
  images = RNG.integers(0, 256, (5, 8, 8), dtype=np.uint8)
  np.savez(tmp_path / "d.npz", images=images, **arrays)
  with pytest.raises(ValueError, match=match):
    sources.load_npz(str(tmp_path / "d.npz"), opts())


def test_npz_bad_files(tmp_path):
  np.savez(tmp_path / "f.npz", images=np.zeros((2, 8, 8), np.float32))
  with pytest.raises(ValueError, match="images must be uint8"):
    sources.load_npz(str(tmp_path / "f.npz"), opts())
  np.savez(tmp_path / "x.npz", pictures=np.zeros((2, 8, 8), np.uint8))
  with pytest.raises(ValueError, match=r"no `images` array \(it has \['pictures'\]\)"):
    sources.load_npz(str(tmp_path / "x.npz"), opts())
  (tmp_path / "garbage.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="garbage.npz: not a readable .npz"):
    sources.load_npz(str(tmp_path / "garbage.npz"), opts())
  with pytest.raises(FileNotFoundError, match="no such file"):
    sources.load_npz(str(tmp_path / "missing.npz"), opts())
  np.savez(tmp_path / "g.npz", images=np.zeros((2, 8, 8), np.uint8))
  with pytest.raises(ValueError, match="no `groups` array"):
    sources.load_npz(str(tmp_path / "g.npz"), opts(group_unit=True))


def test_npz_groups(tmp_path):
  np.savez(tmp_path / "g.npz", images=np.zeros((4, 8, 8), np.uint8),
           groups=np.array(["bob", "ann", "bob", "cy"]))
  loaded = sources.load_npz(str(tmp_path / "g.npz"), opts(group_unit=True))
  np.testing.assert_array_equal(loaded.groups, [1, 0, 1, 2])
  np.savez(tmp_path / "i.npz", images=np.zeros((3, 8, 8), np.uint8),
           groups=np.array([7, -2, 7], np.int64))
  loaded = sources.load_npz(str(tmp_path / "i.npz"), opts(group_unit=True))
  np.testing.assert_array_equal(loaded.groups, [1, 0, 1])
  # Float names could split one user (0.0 and -0.0 print apart) or merge two: refused.
  np.savez(tmp_path / "f.npz", images=np.zeros((2, 8, 8), np.uint8),
           groups=np.array([0.0, -0.0]))
  with pytest.raises(ValueError, match=r"npz:.*f.npz: groups: group names must be integers "
                     r"or strings, got dtype float64"):
    sources.load_npz(str(tmp_path / "f.npz"), opts(group_unit=True))


def test_group_ids_are_dense_and_sorted_and_refuse_mixed_kinds():
  np.testing.assert_array_equal(sources.group_ids(np.array(["b", "a", "b"], dtype=object)),
                                [1, 0, 1])
  np.testing.assert_array_equal(sources.group_ids(np.array([b"y", b"x"])), [1, 0])
  with pytest.raises(ValueError, match=r"got \['int', 'str'\]"):
    sources.group_ids(np.array(["a", 1], dtype=object))


# ---- tfrecord ---------------------------------------------------------------------------

def _example(image=None, label=None, image_key="image", label_key="label"):
  feature = {}
  if image is not None:
    feature[image_key] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[tf.io.encode_png(image).numpy()]))
  if label is not None:
    feature[label_key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_records(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for ex in examples:
      writer.write(ex)


def test_tfrecord_images_and_labels_over_several_files(tmp_path):
  images = [_pixels(seed=10 + i) for i in range(5)]
  _write_records(tmp_path / "b.tfrecord", [_example(images[i], i % 2) for i in (3, 4)])
  _write_records(tmp_path / "a.tfrecord", [_example(images[i], i % 2) for i in (0, 1, 2)])
  loaded = sources.load_tfrecord(str(tmp_path / "*.tfrecord"), opts())
  # Files in sorted order, records in file order.
  np.testing.assert_array_equal(loaded.pixels, np.stack(images))
  assert list(loaded.labels) == [0, 1, 0, 1, 0] and loaded.label_names == ("0", "1")
  _write_records(tmp_path / "k.rec", [_example(images[0], 4, "img", "cls")])
  custom = sources.load_tfrecord(str(tmp_path / "k.rec"), opts(image_key="img",
                                                               label_key="cls"))
  assert list(custom.labels) == [4] and len(custom.label_names) == 5
  _write_records(tmp_path / "u.rec", [_example(images[0]), _example(images[1])])
  assert not sources.load_tfrecord(str(tmp_path / "u.rec"), opts()).labelled


def test_tfrecord_bad_records_name_the_file_and_record(tmp_path):
  _write_records(tmp_path / "a.rec", [_example(_pixels(), 0), _example(None, 1)])
  with pytest.raises(ValueError, match=r"a.rec record 1: 0 values of the image feature "
                     r"'image' \(--image_key\)"):
    sources.load_tfrecord(str(tmp_path / "a.rec"), opts())
  _write_records(tmp_path / "b.rec", [_example(_pixels(), 0), _example(_pixels())])
  with pytest.raises(ValueError, match=r"b.rec record 1: no label feature 'label'"):
    sources.load_tfrecord(str(tmp_path / "b.rec"), opts())
  with pytest.raises(FileNotFoundError, match="no file matches"):
    sources.load_tfrecord(str(tmp_path / "*.none"), opts())
  _write_records(tmp_path / "c.rec", [_example(_pixels(), 0)])
  with pytest.raises(ValueError, match=r"no record has the label feature 'y'"):
    sources.load_tfrecord(str(tmp_path / "c.rec"), opts(label_key="y"))
  (tmp_path / "d.rec").write_bytes(b"not a tfrecord file at all")
  with pytest.raises(ValueError, match="cannot read the records"):
    sources.load_tfrecord(str(tmp_path / "d.rec"), opts())


# ---- tfds --------------------------------------------------------------------------------

class TinyOwnImages(tfds.core.GeneratorBasedBuilder):
  """A user's own builder: 8×8 RGB images with a ClassLabel, prepared offline."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "picture": tfds.features.Image(shape=(8, 8, 3)),
        "label": tfds.features.ClassLabel(names=["round", "square"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(6, 0), "test": self._generate_examples(2, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"picture": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "label": i % 2}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  TinyOwnImages(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_a_users_own_tfds_builder(tfds_dir):
  loaded = sources.load_tfds("tiny_own_images", "train",
                             opts(data_dir=tfds_dir, image_key="picture"))
  assert loaded.pixels.shape == (6, 8, 8, 3) and loaded.label_names == ("round", "square")
  expected = list(tfds.as_numpy(tfds.load("tiny_own_images", split="train",
                                          data_dir=tfds_dir)))
  # as_dataset's order: compare as multisets of (label, image bytes).
  got = sorted((int(y), x.tobytes()) for x, y in zip(loaded.pixels, loaded.labels))
  assert got == sorted((int(ex["label"]), ex["picture"].tobytes()) for ex in expected)
  test = sources.load_tfds("tiny_own_images", "test",
                           opts(data_dir=tfds_dir, image_key="picture", size=(16, 16)))
  assert test.pixels.shape == (2, 16, 16, 3)


def test_tfds_errors(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match=r"no image feature 'image' \(--image_key\); features"):
    sources.load_tfds("tiny_own_images", "train", opts(data_dir=tfds_dir))
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(FileNotFoundError, match=f"tfds:tiny_own_images: not prepared under "
                     f"--data_dir={empty}"):
    sources.load_tfds("tiny_own_images", "train", opts(data_dir=empty, image_key="picture"))
  with pytest.raises(FileNotFoundError, match="tfds:no_such_builder: not prepared"):
    sources.load_tfds("no_such_builder", "train", opts(data_dir=empty))
  assert os.listdir(empty) == []  # nothing written, nothing downloaded


# ---- transform_array -------------------------------------------------------------------

def test_transform_array_leaves_arrays_alone_unless_asked():
  pixels = RNG.integers(0, 17, (3, 8, 8, 1), dtype=np.uint8)
  assert sources.transform_array(pixels, 16, None, None) is pixels
  assert sources.transform_array(pixels, 16, (8, 8), 1) is pixels
  bigger = sources.transform_array(pixels, 16, (16, 16), 3)
  assert bigger.shape == (3, 16, 16, 3) and bigger.max() <= 16  # the digits' 0..16 kept

