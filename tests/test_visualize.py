import subprocess
import sys

import imageio.v3 as iio
import numpy as np

from dfm.visualize import save_video


def frames(n: int = 5, h: int = 20, w: int = 36) -> list[np.ndarray]:
    return [np.full((h, w, 3), 40 * i, np.uint8) for i in range(n)]


def test_videos_keep_every_frame_and_pad_mp4_to_multiples_of_16(tmp_path):
    gif = iio.imread(save_video(frames(), tmp_path / "v.gif"))
    assert gif.shape[:3] == (5, 20, 36)
    mp4 = iio.imread(save_video(frames(), tmp_path / "v.mp4"), plugin="FFMPEG")
    assert mp4.shape == (5, 32, 48, 3)
    assert abs(int(mp4[4, 10, 10, 0]) - 160) < 8 and mp4[4, -1, -1].min() > 240  # content kept, padding white


def test_mp4_without_imageio_ffmpeg_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['imageio_ffmpeg'] = None\n"
        "import numpy as np; from pathlib import Path; from dfm.visualize import save_video\n"
        f"save_video([np.zeros((16, 16, 3), np.uint8)] * 2, Path({str(tmp_path / 'v.mp4')!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "imageio[ffmpeg]" in proc.stderr, proc.stderr[-1000:]


def test_upscaled_makes_small_images_and_grid_cells_visible():
    from dfm.visualize import upscaled

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = upscaled(image, 8)  # shorter side 2 -> at least 8: x4, nearest neighbour
    assert big.shape == (8, 12, 3) and (big[:4, :4] == image[0, 0]).all()
    grid = np.zeros((64, 320, 3), np.uint8)  # 2 x 10 cells of 32 px
    assert upscaled(grid, 96, cell=32).shape == (192, 960, 3)
    assert upscaled(grid, 256).shape == (256, 1280, 3)  # by the shorter side: x4
