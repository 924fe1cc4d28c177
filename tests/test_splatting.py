"""Forward warping by splatting: known answers, gradients, and a real stereo pair."""

import numpy as np
import pytest
import torch

from dfm.splatting import MODES, backward_warp, fill_holes, softsplat, splat


def test_integer_flow_is_an_exact_shift():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 6, 7, generator=g)
    flow = torch.zeros(2, 2, 6, 7)
    flow[:, 0] = 2  # two pixels right
    flow[:, 1] = -1  # one pixel up
    for mode in MODES:
        out, mask = softsplat(image, flow, torch.rand(2, 1, 6, 7, generator=g) + 0.1, mode)
        torch.testing.assert_close(out[:, :, :-1, 2:], image[:, :, 1:, :-2])
        assert mask[:, :, :-1, 2:].eq(1).all() and mask[:, :, -1:].eq(0).all() and mask[..., :2].eq(0).all()
        assert out[:, :, -1:].eq(0).all()


def test_summation_conserves_mass_and_splits_bilinearly():
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 1, 1] = 1.0
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, 1, 1], flow[0, 1, 1, 1] = 0.25, 0.5  # lands at x=1.25, y=1.5
    out = splat(image, flow)[0, 0]
    expected = {(1, 1): 0.75 * 0.5, (1, 2): 0.25 * 0.5, (2, 1): 0.75 * 0.5, (2, 2): 0.25 * 0.5}
    for (y, x), v in expected.items():
        assert out[y, x].item() == pytest.approx(v)
    assert out.sum().item() == pytest.approx(1.0)
    # leaving the image loses mass instead of wrapping around
    flow[0, 0, 1, 1] = 10.0
    assert splat(image, flow).sum().item() == 0


def test_occlusion_average_blends_and_softmax_picks_the_important_pixel():
    image = torch.zeros(1, 1, 1, 3)
    image[0, 0, 0, 0], image[0, 0, 0, 2] = 1.0, 3.0  # two sources landing on the middle pixel
    flow = torch.zeros(1, 2, 1, 3)
    flow[0, 0, 0, 0], flow[0, 0, 0, 2] = 1.0, -1.0
    flow[0, 0, 0, 1] = 5.0  # the middle source leaves the image
    z = torch.tensor([[[[0.0, 0.0, 20.0]]]])
    avg, _ = softsplat(image, flow, mode="average")
    soft, _ = softsplat(image, flow, z, mode="softmax")
    lin, _ = softsplat(image, flow, torch.tensor([[[[1.0, 1.0, 3.0]]]]), mode="linear")
    assert avg[0, 0, 0, 1].item() == pytest.approx(2.0)
    assert soft[0, 0, 0, 1].item() == pytest.approx(3.0, abs=1e-6)
    assert lin[0, 0, 0, 1].item() == pytest.approx((1 * 1 + 3 * 3) / 4)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_in_image_flow_and_metric(mode):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    # fractional flows away from integer boundaries, where the bilinear weights are smooth
    flow = (torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64) * 2 - 1).mul(1.3).add(0.13).requires_grad_()
    metric = (torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda i, f, z: softsplat(i, f, z, mode)[0], (image, flow, metric))


def test_real_stereo_pair_is_reproduced():
    """Splatting the left Middlebury image by its ground-truth disparity gives the right image."""
    data = pytest.importorskip("skimage.data")
    left, right, disparity = data.stereo_motorcycle()
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255
    left, right = to_tensor(left), to_tensor(right)
    disp = torch.from_numpy(disparity)[None, None]
    valid = torch.isfinite(disp)
    disp = torch.where(valid, disp, torch.zeros_like(disp))
    flow = torch.cat([-disp, torch.zeros_like(disp)], dim=1)  # right = left moved by -disparity along x

    def psnr(a, b, m):
        return (10 * torch.log10(m.sum() * 3 / ((a - b) ** 2 * m).sum())).item()

    warped, covered = softsplat(left, flow, disp, "softmax", source_mask=valid.float(), min_coverage=0.5)
    assert psnr(warped, right, covered) >= 27.0  # nearer pixels (larger disparity) win occlusions
    assert psnr(left, right, covered) < 15.0  # what not warping would score


def test_fill_holes_takes_the_mean_of_the_nearest_covered_pixels():
    image = torch.arange(25.0).view(1, 1, 5, 5).repeat(1, 2, 1, 1)
    mask = torch.ones(1, 1, 5, 5)
    mask[..., 2, 2] = 0  # an isolated hole: the mean of its 8 neighbours (= its own index, 12)
    mask[..., 0, :2] = 0  # a hole at the border: (0, 0) has covered neighbours 5 and 6 in its 3x3 window
    filled = fill_holes(image * mask, mask)
    assert filled[0, 0, 2, 2] == 12 and filled[0, 1, 0, 0] == (5 + 6) / 2
    assert torch.equal(filled * mask, image * mask)  # covered pixels keep their values
    far = torch.zeros(1, 1, 9, 9)
    far[..., 0, 0] = 1  # one covered pixel: a 3x3 window reaches it from (1, 1); (8, 8) needs 17x17
    out = fill_holes(torch.full((1, 1, 9, 9), 7.0) * far, far)
    torch.testing.assert_close(out, torch.full_like(out, 7.0))
    image = torch.rand(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fill_holes(x, mask.double()), (image,))


def test_backward_warp_reads_where_the_flow_points():
    image = torch.arange(20.0).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0], flow[:, 1] = 1.0, 2.0  # read one column right and two rows down
    out = backward_warp(image, flow)
    assert torch.equal(out[..., :2, :4], image[..., 2:, 1:]) and out[..., 2:, :].abs().sum() == 0 and out[..., 4].abs().sum() == 0
    flow[:, 0], flow[:, 1] = 0.25, 0.0  # a quarter pixel right: linear between neighbours
    torch.testing.assert_close(backward_warp(image, flow)[..., :4], image[..., :4] + 0.25)
    # what splatting moves forward by an integer flow, the backward warp by the same flow reads back
    src = torch.rand(1, 3, 6, 6)
    shift = torch.zeros(1, 2, 6, 6)
    shift[:, 0] = 2.0
    torch.testing.assert_close(backward_warp(splat(src, shift), shift)[..., :4], src[..., :4])
    image = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    smooth = (torch.rand(1, 2, 4, 5, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()  # away from pixel centres
    assert torch.autograd.gradcheck(backward_warp, (image, smooth))
