"""Datasets: one test group per source, plus the make_dataset registry."""

from __future__ import annotations

import io
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft.data import DATASETS, make_dataset
from noisecraft.data.toy2d import Toy2DDataset

# ---------------------------------------------------------------------------------------------
# registry


def test_make_dataset_builds_each_name_and_rejects_bad_options(tmp_path):
    assert set(DATASETS) == {"toy2d", "shapes", "tones", "emoji", "mnist", "folder", "shards"}
    ds = make_dataset("shapes", size=16, length=3, seed=1)
    assert len(ds) == 3 and ds[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="valid: toy2d, shapes, tones, emoji, mnist, folder, shards"):
        make_dataset("cifar")
    with pytest.raises(ValueError, match=r"no option\(s\) colour; valid: size, length, seed, split"):
        make_dataset("shapes", colour="red")
    with pytest.raises(ValueError, match=r"needs option\(s\) root"):
        make_dataset("folder")


# ---------------------------------------------------------------------------------------------
# toy2d


def test_toy2d_points_follow_their_named_component():
    ds = Toy2DDataset("ring", length=4000, seed=0)
    assert len(ds) == 4000 and ds.captions == sorted(set(ds.captions)) and len(ds.captions) == 8
    point, caption = ds[0]
    assert point.shape == (2,) and isinstance(caption, str)
    d = ds.denoiser
    for k in range(8):
        pts = ds.points[ds.components == k].double()
        # each component is N(μ_k, 0.02 I): its sample mean is within 5 standard errors of μ_k
        assert (pts.mean(0) - d.means[k]).abs().max() < 5 * 0.02**0.5 / len(pts) ** 0.5
    north = torch.stack([p for p, c in (ds[i] for i in range(200)) if c == "the north point of the ring"])
    assert (north[:, 1] > 1.0).all()  # "north" is the component at (0, 1.5)
    assert torch.allclose(d(ds.points[:10], torch.tensor(0.0)), ds.points[:10], atol=1e-6)  # D(x, 0) = x
    again = Toy2DDataset("ring", length=4000, seed=0)
    assert torch.equal(again.points, ds.points)


# ---------------------------------------------------------------------------------------------
# emoji (needs the Debian font; skipped loudly without it)

import noisecraft.data.emoji as emoji_module  # noqa: E402

FONT_PRESENT = Path(emoji_module.DEFAULT_FONT).is_file()
needs_font = pytest.mark.skipif(
    not FONT_PRESENT,
    reason=f"EMOJI TESTS SKIPPED: {emoji_module.DEFAULT_FONT} is missing — {emoji_module.INSTALL_HINT}",
)


@pytest.fixture(scope="module")
def emoji_ds():
    return emoji_module.EmojiDataset(size=32)


@needs_font
def test_emoji_count_and_filtering(emoji_ds):
    import emoji as emoji_package

    # Measured 1,899 with fonts-noto-color-emoji 2.042 (Emoji 15.1) and emoji 2.16: every fully
    # qualified, skin-tone-free entry up to Emoji 15.1. An Emoji-15.0 font draws 28 fewer (1,871);
    # the table holds 1,923 such entries in all (up to Emoji 17), so nothing outside [1860, 1930].
    n = len(emoji_ds)
    print(f"emoji: {n} entries, {len(emoji_ds.captions)} distinct captions")
    assert 1860 <= n <= 1930
    tones = {chr(c) for c in range(0x1F3FB, 0x1F400)}
    fully = emoji_package.STATUS["fully_qualified"]
    for entry in emoji_ds.entries:
        assert not set(entry.char) & tones
        assert emoji_package.EMOJI_DATA[entry.char]["status"] == fully  # no components, no duplicates
        assert not (len(entry.char) == 1 and 0x1F1E6 <= ord(entry.char) <= 0x1F1FF)  # no lone letters
        assert entry.name and entry.name not in entry.variants
    by_char = {e.char: e for e in emoji_ds.entries}
    assert by_char["😀"].name == "grinning face"
    assert by_char["🇯🇵"].name == "flag of Japan"
    assert "🦰" not in by_char and "👍🏽" not in by_char  # a hair component, a skin-tone variant
    assert {"thumbs up", "flag of Japan", "grinning face"} <= set(emoji_ds.captions)
    assert len(emoji_module.EmojiDataset(size=8, flags=False)) < n - 250  # ≈ 260 flags


@needs_font
def test_emoji_images_and_caption_variants(emoji_ds):
    index = next(
        i for i, e in enumerate(emoji_ds.entries) if e.char == "🏃"
    )  # person running, runner, running
    image, caption = emoji_ds[index]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert (image[:, 0, 0] == 1).all() and (image[:, -1, -1] == 1).all()  # white background
    assert image.min() < -0.5  # and a drawn emoji on it
    names = {emoji_ds.entries[index].name, *emoji_ds.entries[index].variants}
    assert caption in names and len(names) > 1
    seen = set()
    for epoch in range(12):
        emoji_ds.set_epoch(epoch)
        seen.add(emoji_ds[index][1])
        assert emoji_ds[index][1] == emoji_ds[index][1]  # deterministic within an epoch
    emoji_ds.set_epoch(0)
    assert seen == names  # every name variant shows up as epochs go by


def test_emoji_missing_font_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        emoji_module.EmojiDataset(font_path=tmp_path / "NotoColorEmoji.ttf")
    monkeypatch.setattr(emoji_module, "DEFAULT_FONT", str(tmp_path / "gone.ttf"))
    with pytest.raises(FileNotFoundError, match="gone.ttf.*apt-get install fonts-noto-color-emoji"):
        make_dataset("emoji")


# ---------------------------------------------------------------------------------------------
# mnist

import noisecraft.data.mnist as mnist_module  # noqa: E402


def test_mnist_is_real_mnist():
    train, test = mnist_module.MNISTDataset("train"), mnist_module.MNISTDataset("test", size=28)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9] and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert Counter(train.labels.tolist())[1] == 6742  # the well-known count of ones in the training set
    # the famous normalisation constants: training pixels have mean 0.1307 and std 0.3081 in [0, 1]
    pixels = train.images.float() / 255
    assert abs(pixels.mean() - 0.1307) < 1e-4 and abs(pixels.std() - 0.3081) < 1e-4
    image, caption = train[0]
    assert image.shape == (1, 32, 32) and image.min() == -1 and image.max() == 1
    assert (image[:, :2] == -1).all() and (image[:, :, -2:] == -1).all()  # padding is background
    assert torch.equal(image[:, 2:30, 2:30], train.images[0].float()[None] / 127.5 - 1)  # no resampling
    assert test[0][0].shape == (1, 28, 28)
    assert mnist_module.MNISTDataset("test", size=16)[0][0].shape == (1, 16, 16)


def test_mnist_captions_name_the_label():
    ds = mnist_module.MNISTDataset("test")
    for i in range(30):
        label, caption = int(ds.labels[i]), ds[i][1]
        assert caption in mnist_module.digit_captions(label)
        assert mnist_module.DIGIT_WORDS[label] in caption.split() or str(label) in caption.split()
    assert len(ds.captions) == 60 and "a handwritten digit seven" in ds.captions
    assert len({ds[i][1] for i in range(200)}) > 20  # templates vary
    fixed = mnist_module.MNISTDataset("test", caption_variants=False)
    assert fixed[0][1] == "a handwritten digit seven"  # test image 0 is a 7
    with pytest.raises(ValueError, match="train, test"):
        mnist_module.MNISTDataset("validation")


def test_mnist_unpickler_builds_arrays_only():
    evil = pickle.dumps(print)  # a global outside numpy: refused, never called
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        mnist_module._ArrayUnpickler(io.BytesIO(evil)).load()
    fine = pickle.dumps(np.arange(3))
    assert mnist_module._ArrayUnpickler(io.BytesIO(fine)).load().tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# folder


def _stripes(width: int, height: int) -> Image.Image:
    """Three vertical bands: red | green | blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 3, 0] = 255
    a[:, width // 3 : 2 * width // 3, 1] = 255
    a[:, 2 * width // 3 :, 2] = 255
    return Image.fromarray(a)


def test_folder_with_txt_captions_resizes_crops_and_flips(tmp_path):
    _stripes(60, 40).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("three stripes\n")
    (tmp_path / "sub").mkdir()
    Image.new("RGBA", (20, 30), (0, 0, 0, 0)).save(tmp_path / "sub" / "clear.png")  # fully transparent
    (tmp_path / "sub" / "clear.txt").write_text("nothing")
    ds = make_dataset("folder", root=tmp_path, size=32)
    assert len(ds) == 2 and ds.captions == ["nothing", "three stripes"]
    clear, caption = ds[0]
    assert caption == "nothing" and clear.shape == (3, 32, 32) and (clear == 1).all()  # alpha over white
    wide, caption = ds[1]
    assert caption == "three stripes"
    # 60×40 → 48×32, centre crop [8, 40): red for 8 columns, green for 16, blue for 8
    rgb = wide.argmax(0)  # [32, 32] which channel is on
    assert (rgb[:, :6] == 0).all() and (rgb[:, 10:22] == 1).all() and (rgb[:, 26:] == 2).all()
    flips = make_dataset("folder", root=tmp_path, size=32, flip=True, seed=0)
    outcomes = set()
    for epoch in range(10):
        flips.set_epoch(epoch)
        image = flips[1][0]
        assert torch.equal(image, flips[1][0])  # the same within an epoch
        assert torch.equal(image, wide) or torch.equal(image, wide.flip(-1))
        outcomes.add(torch.equal(image, wide))
    assert outcomes == {True, False}


def test_folder_with_metadata_jsonl(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 40), colour).save(tmp_path / "imgs" / f"{i}.jpg", quality=95)
    Image.new("RGB", (40, 40)).save(tmp_path / "imgs" / "unlisted.png")  # not in metadata: ignored
    lines = [{"file_name": "imgs/0.jpg", "text": "a red square"}, {"file_name": "imgs/1.jpg", "text": "blue"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    ds = make_dataset("folder", root=tmp_path, size=16)
    assert len(ds) == 2 and [ds[i][1] for i in range(2)] == ["a red square", "blue"]
    red = ds[0][0]
    assert red.shape == (3, 16, 16) and red[0].min() > 0.95 and red[1:].max() < -0.95
    (tmp_path / "metadata.jsonl").write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: not valid JSON"):
        make_dataset("folder", root=tmp_path)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "imgs/9.jpg", "text": "x"}))
    with pytest.raises(ValueError, match=r"9.jpg does not exist"):
        make_dataset("folder", root=tmp_path)


def test_folder_errors_name_the_file(tmp_path):
    _stripes(30, 30).save(tmp_path / "good.png")
    (tmp_path / "good.txt").write_text("ok")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "broken.txt").write_text("bad")
    ds = make_dataset("folder", root=tmp_path)
    assert ds[1][1] == "ok"
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
        ds[0]
    assert ds.check() == [tmp_path / "broken.png"]
    Image.new("RGB", (8, 8)).save(tmp_path / "broken.png", format="TIFF")  # only PNG, JPEG, WebP
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image \(PNG, JPEG, WEBP only\)"):
        ds[0]
    (tmp_path / "orphan.png").write_bytes((tmp_path / "good.png").read_bytes())
    with pytest.raises(ValueError, match=r"no caption .*orphan\.png"):
        make_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        make_dataset("folder", root=tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# shards

import webdataset as wds  # noqa: E402  (a dependency, not optional: no skip)

N_SHARDS, PER_SHARD = 4, 5


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for s in range(N_SHARDS):
        with wds.TarWriter(str(root / f"data-{s:03d}.tar")) as sink:
            for j in range(PER_SHARD):
                k = s * PER_SHARD + j
                png = io.BytesIO()
                Image.new("RGB", (24, 24), (10 * k, 0, 0)).save(png, format="PNG")
                sink.write({"__key__": f"{k:06d}", "png": png.getvalue(), "txt": f"sample {k}"})
    return root


def _captions(dataset, workers: int = 0) -> list[str]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    return [caption for _, caption in loader]


ALL = sorted(f"sample {k}" for k in range(N_SHARDS * PER_SHARD))


def test_shards_stream_every_sample_once(shard_dir):
    ds = make_dataset("shards", root=shard_dir, size=16)
    image, caption = next(iter(ds))
    assert image.shape == (3, 16, 16) and caption == "sample 0"
    assert abs(float(image[0, 8, 8]) - (0 / 127.5 - 1)) < 1e-6 and image.min() >= -1
    assert sorted(_captions(ds)) == ALL
    pattern = make_dataset("shards", root=str(shard_dir / "data-{000..003}.tar"), size=16)
    assert pattern.shards == ds.shards


def test_shards_split_across_workers_and_ranks(shard_dir):
    two_workers = _captions(make_dataset("shards", root=shard_dir, size=16), workers=2)
    assert sorted(two_workers) == ALL  # each sample exactly once, none repeated
    per_rank = [
        _captions(make_dataset("shards", root=shard_dir, size=16, rank=r, world_size=2), workers=w)
        for r, w in [(0, 0), (1, 0)]
    ]
    assert sorted(per_rank[0] + per_rank[1]) == ALL and set(per_rank[0]).isdisjoint(per_rank[1])
    assert len(per_rank[0]) == len(per_rank[1]) == 10
    # 2 ranks × 2 workers = 4 readers, one shard each
    readers = [
        _captions(make_dataset("shards", root=shard_dir, size=16, rank=r, world_size=2), workers=2)
        for r in (0, 1)
    ]
    assert sorted(readers[0] + readers[1]) == ALL and len(readers[0]) == len(readers[1]) == 10


def test_shards_shuffle_is_seeded_per_epoch(shard_dir):
    ds = make_dataset("shards", root=shard_dir, size=8, shuffle_buffer=6, seed=3)
    first = _captions(ds)
    assert sorted(first) == ALL and first != ALL
    assert _captions(ds) == first  # same seed, same epoch: same order
    ds.set_epoch(1)
    assert sorted(_captions(ds)) == ALL and _captions(ds) != first
    with pytest.raises(ValueError, match="do not exist"):
        make_dataset("shards", root=str(shard_dir / "data-{000..009}.tar"))
    with pytest.raises(ValueError, match="rank and world_size"):
        make_dataset("shards", root=shard_dir, rank=2, world_size=2)
