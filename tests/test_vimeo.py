"""Vimeo90K loader: layout, pair indexing, exact pixels, resizing, and errors that name the culprit."""

import re

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dfm.data.vimeo import (
    DatasetError,
    Vimeo90K,
    detect_layout,
    load_frame,
    read_list,
    write_lists,
    write_sequence,
)

FRAMES = {"triplet": 3, "septuplet": 7}
PREFIX = {"triplet": "tri", "septuplet": "sep"}


def make_vimeo(root, layout, train=("00001/0001", "00001/0002", "00002/0001"), test=("00003/0001",), h=5, w=8):
    """The Vimeo90K layout written with imageio directly (not our writer), lists with blank lines and
    trailing whitespace as in the real files; returns the uint8 HWC frames by sequence id."""
    rng = np.random.default_rng(0)
    frames = {}
    for seq in train + test:
        frames[seq] = rng.integers(0, 256, size=(FRAMES[layout], h, w, 3), dtype=np.uint8)
        (root / "sequences" / seq).mkdir(parents=True)
        for i, image in enumerate(frames[seq], start=1):
            iio.imwrite(root / "sequences" / seq / f"im{i}.png", image)
    for split, ids in (("train", train), ("test", test)):
        (root / f"{PREFIX[layout]}_{split}list.txt").write_text("".join(f"{s}  \n\n" for s in ids))
    return frames


def to_model_range(image):
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1


@pytest.mark.parametrize("layout", ["triplet", "septuplet"])
def test_layout_lists_and_pair_count(tmp_path, layout):
    make_vimeo(tmp_path, layout)
    assert detect_layout(tmp_path) == layout
    assert read_list(tmp_path, "train", layout) == ["00001/0001", "00001/0002", "00002/0001"]
    assert read_list(tmp_path, "test", layout) == ["00003/0001"]
    data = Vimeo90K(tmp_path)
    assert data.layout == layout and data.sequences == ["00001/0001", "00001/0002", "00002/0001"]
    assert len(data) == 3 * (FRAMES[layout] - 1)
    assert len(Vimeo90K(tmp_path, split="test")) == FRAMES[layout] - 1


@pytest.mark.parametrize("layout", ["triplet", "septuplet"])
def test_pairs_are_consecutive_frames_with_exact_pixels(tmp_path, layout):
    frames = make_vimeo(tmp_path, layout)
    data = Vimeo90K(tmp_path)
    pairs = FRAMES[layout] - 1
    for index in range(len(data)):
        item = data[index]
        seq, frame = data.sequences[index // pairs], index % pairs + 1
        assert (item["sequence"], item["frame"]) == (seq, frame)
        assert item["ctxt_obs"].dtype == torch.float32 and item["ctxt_obs"].shape == (3, 5, 8)
        torch.testing.assert_close(item["ctxt_obs"], to_model_range(frames[seq][frame - 1]), rtol=0, atol=0)
        torch.testing.assert_close(item["trgt_obs"], to_model_range(frames[seq][frame]), rtol=0, atol=0)
    whole = data.frames(1)
    assert whole.shape == (FRAMES[layout], 3, 5, 8)
    torch.testing.assert_close(whole, torch.stack([to_model_range(f) for f in frames["00001/0002"]]), rtol=0, atol=0)
    with pytest.raises(IndexError):
        data[len(data)]


def test_resize_and_centre_crop(tmp_path):
    # shrinking 12x16 to 8: shorter side 12 -> 8, longer 16 -> 11 (rounded), then a central 8x8
    make_vimeo(tmp_path, "triplet", h=12, w=16)
    item = Vimeo90K(tmp_path, resolution=8)[0]
    assert item["ctxt_obs"].shape == item["trgt_obs"].shape == (3, 8, 8)
    assert Vimeo90K(tmp_path, resolution=20).frames(0).shape == (3, 3, 20, 20)  # growing
    # without a resize the crop is exactly the centre: columns 2..5 of an 4x8 ramp
    ramp = np.broadcast_to(np.arange(0, 80, 10, dtype=np.uint8)[None, :, None], (4, 8, 3))
    iio.imwrite(tmp_path / "ramp.png", ramp)
    torch.testing.assert_close(load_frame(tmp_path / "ramp.png", 4), to_model_range(ramp[:, 2:6].copy()))
    # a constant colour stays that colour whether shrunk, grown or cropped
    constant = np.broadcast_to(np.array([200, 30, 90], dtype=np.uint8), (12, 16, 3))
    iio.imwrite(tmp_path / "constant.png", constant)
    expected = torch.tensor([200, 30, 90]) / 127.5 - 1
    for resolution in (5, 12, 31):
        out = load_frame(tmp_path / "constant.png", resolution)
        assert out.shape == (3, resolution, resolution)
        torch.testing.assert_close(out, expected[:, None, None].expand_as(out))


def test_grey_and_rgba_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(5, 8), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(5, 8, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "grey.png", grey)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    torch.testing.assert_close(load_frame(tmp_path / "grey.png"), to_model_range(np.repeat(grey[..., None], 3, -1)))
    torch.testing.assert_close(load_frame(tmp_path / "rgba.png"), to_model_range(rgba[..., :3].copy()))


@pytest.mark.parametrize("layout", ["triplet", "septuplet"])
def test_writer_round_trips_through_the_loader(tmp_path, layout):
    frames = torch.randint(0, 256, (FRAMES[layout], 3, 6, 9)) / 127.5 - 1
    write_sequence(tmp_path, "00007/0003", frames, layout)
    write_lists(tmp_path, layout, ["00007/0003"], ["00007/0003"])
    assert sorted(p.name for p in (tmp_path / "sequences" / "00007" / "0003").iterdir()) == [
        f"im{i}.png" for i in range(1, FRAMES[layout] + 1)
    ]
    data = Vimeo90K(tmp_path, split="test")
    torch.testing.assert_close(data.frames(0), frames, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs frames of shape"):
        write_sequence(tmp_path, "00007/0004", frames[:2], layout)


def test_dataloader_collates_batches(tmp_path):
    make_vimeo(tmp_path, "septuplet", h=12, w=16)
    batch = next(iter(torch.utils.data.DataLoader(Vimeo90K(tmp_path, resolution=8), batch_size=2)))
    assert batch["ctxt_obs"].shape == batch["trgt_obs"].shape == (2, 3, 8, 8)
    assert batch["sequence"] == ["00001/0001", "00001/0001"]
    assert batch["frame"].tolist() == [1, 2]


def test_errors_at_construction_name_the_culprit(tmp_path):
    root = re.escape(str(tmp_path))
    with pytest.raises(DatasetError, match=f"root {root}/nowhere does not exist"):
        Vimeo90K(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=f"no list file in Vimeo90K root {root}: expected .*tri_trainlist.txt"):
        detect_layout(tmp_path)
    (tmp_path / "tri_trainlist.txt").touch()
    (tmp_path / "sep_testlist.txt").touch()
    with pytest.raises(DatasetError, match=f"both triplet and septuplet list files in Vimeo90K root {root}"):
        detect_layout(tmp_path)
    (tmp_path / "tri_trainlist.txt").unlink()
    (tmp_path / "sep_testlist.txt").unlink()

    make_vimeo(tmp_path, "triplet")
    (tmp_path / "tri_testlist.txt").unlink()
    with pytest.raises(DatasetError, match=f"list file {root}/tri_testlist.txt does not exist"):
        Vimeo90K(tmp_path, split="test")
    (tmp_path / "tri_testlist.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=f"list file {root}/tri_testlist.txt lists no sequences"):
        Vimeo90K(tmp_path, split="test")

    (tmp_path / "tri_trainlist.txt").write_text("00001/0001\n" + "".join(f"00009/{i:04d}\n" for i in range(7)))
    with pytest.raises(DatasetError, match="7 sequence directories") as error:
        Vimeo90K(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "sequences" / "00009" / "0004") in message
    assert "00009/0005" not in message and message.endswith(", ...")  # at most five, then an ellipsis


def test_errors_at_load_name_the_file(tmp_path):
    make_vimeo(tmp_path, "triplet")
    data = Vimeo90K(tmp_path)
    seq = tmp_path / "sequences" / "00001" / "0001"
    im1, im2 = (re.escape(str(seq / name)) for name in ("im1.png", "im2.png"))
    (seq / "im2.png").unlink()
    with pytest.raises(DatasetError, match=f"frame {im2} does not exist"):
        data[0]
    (seq / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match=f"cannot read frame {im2}"):
        data[1]
    iio.imwrite(seq / "im2.png", np.zeros((6, 8, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=f"frame {im2} is 8x6 but {im1} is 8x5"):
        Vimeo90K(tmp_path, resolution=4)[0]  # the resize would hide the mismatch
