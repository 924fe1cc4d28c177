"""The jaxtyping shape annotations of rendering, cameras and the field are real: they resolve, they use
each module's documented dimension names, and a runtime checker (jaxtyping + beartype) accepts
correctly shaped calls of the key functions (arguments and results) and rejects wrongly shaped ones."""

import inspect
import typing

import pytest
import torch
from jaxtyping import AbstractArray, TypeCheckError, jaxtyped
from torch import Tensor

from dfm import cameras, rendering
from dfm.networks import field as field_module
from dfm.networks.field import PixelAlignedField

MODULES = (rendering, cameras, field_module)

# every dimension token (space-separated) that each module's annotations may use: its docstring's
# names, their broadcastable and symbolic forms, and fixed sizes
VOCABULARY = {
    rendering: {"*batch", "*#batch", "S", "S+1", "E", "E-1", "N", "_", "1", "3", "#3"},
    cameras: {"*batch", "*#batch", "N", "H", "W", "H*W", "{height}*{width}", "{size}*{size}", "{n}", "2", "3", "4"},
    field_module: {"B", "V", "F", "H", "W", "*points", "G", "_", "*batch", "D", "D*({include_input}+2*{num_frequencies})", "1", "3", "4"},
}

# tensors left without a shape, on purpose
UNSHAPED = {
    "dfm.cameras.validate_cameras": {"c2w", "K"},  # checks the shapes itself and raises CameraError
    "dfm.rendering.render_rays": {"return"},  # nested dicts of composite's outputs, documented there
}


def annotated_objects():
    """``(qualified name, object)`` of every public function, class and method of the modules."""
    for module in MODULES:
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
            elif inspect.isclass(obj) and not issubclass(obj, Exception):
                yield f"{module.__name__}.{name}", obj
                for method_name, method in vars(obj).items():
                    method = method.fget if isinstance(method, property) else method
                    if inspect.isfunction(method) and (method_name == "forward" or not method_name.startswith("_")):
                        yield f"{module.__name__}.{name}.{method_name}", method


def leaves(hint):
    """The types in a (possibly nested, generic or union) annotation."""
    args = typing.get_args(hint)
    if not args:
        yield hint
    for arg in args:
        yield from leaves(arg) if not isinstance(arg, list) else (x for a in arg for x in leaves(a))


def test_every_annotation_resolves_with_a_shape_in_the_module_vocabulary():
    unshaped, outside = {}, {}
    for name, obj in annotated_objects():
        module = inspect.getmodule(obj)
        hints = typing.get_type_hints(obj, include_extras=True)  # raises if an annotation does not resolve
        own = vars(obj).get("__annotations__", {}) if inspect.isclass(obj) else hints  # not nn.Module's
        for parameter, hint in hints.items():
            if parameter not in own:
                continue
            vocabulary = VOCABULARY[rendering if hint == rendering.Field else module]  # bind() returns a Field
            for leaf in leaves(hint):
                if leaf is Tensor:
                    unshaped.setdefault(name, set()).add(parameter)
                elif inspect.isclass(leaf) and issubclass(leaf, AbstractArray):
                    extra = set(leaf.dim_str.split()) - vocabulary
                    if extra:
                        outside[f"{name}({parameter})"] = extra
    assert unshaped == UNSHAPED
    assert outside == {}


def dims(obj, parameter: str) -> str:
    return typing.get_type_hints(obj)[parameter].dim_str


def test_key_dimension_strings():
    assert dims(rendering.render_rays, "origins") == "*batch 3"
    assert dims(rendering.composite, "density") == "*batch S 1"
    assert dims(rendering.RaySamples, "edges") == "*batch S+1 1"
    assert dims(rendering.distortion_loss, "return") == "*batch"
    assert dims(cameras.rays, "uv") == "*batch N 2"
    assert [h.dim_str for h in typing.get_args(typing.get_type_hints(cameras.project)["return"])] == ["*batch N 2", "*batch N"]
    assert dims(cameras.depth_points, "return") == "*batch H*W 3"
    assert dims(PixelAlignedField.forward, "feature_maps") == "B V F H W"
    assert dims(PixelAlignedField.forward, "points") == "B *points 3"
    assert dims(field_module.sample_pixel_features, "c2w") == "B V 4 4"


# --- runtime checks ---------------------------------------------------------------------------


@pytest.fixture
def checked():
    """``checked(fn)``: ``fn`` (unwrapped from its decorators) with its annotations checked at each call."""
    beartype = pytest.importorskip("beartype").beartype
    return lambda fn: jaxtyped(typechecker=beartype)(inspect.unwrap(fn))


def toy_field(points, directions):
    return {"density": points.norm(dim=-1, keepdim=True), "rgb": torch.sigmoid(points), "features": directions[..., :2]}


def test_rendering_annotations_hold_at_runtime(checked):
    g = torch.Generator().manual_seed(0)
    origins = torch.zeros(2, 5, 3)
    directions = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=g), dim=-1)
    near, colour = torch.full((2, 1, 1), 0.5), torch.tensor([0.0, 0.5, 1.0])  # near per scene, as the scenes model passes it
    out = checked(rendering.render_rays)(
        toy_field, origins, directions, near, 4.0, num_coarse=6, num_fine=4, background=colour, chunk=2
    )
    assert out["fine"]["weights"].shape == (2, 5, 10, 1)

    samples = checked(rendering.stratified_samples)(origins, near, 4.0, 6, spacing="disparity")
    weights = torch.rand(2, 5, 6, 1, generator=g)
    fine_t = checked(rendering.importance_samples)(samples.edges, weights, 4)
    merged = checked(rendering.merge_samples)(samples, fine_t)
    hints = typing.get_type_hints(rendering.RaySamples)
    for each in (samples, merged):
        with jaxtyped("context"):
            assert isinstance(each.t, hints["t"]) and isinstance(each.edges, hints["edges"])
    with jaxtyped("context"):
        assert not isinstance(samples.edges, hints["t"]) or not isinstance(samples.edges, hints["edges"])
    values = {"rgb": torch.rand(2, 5, 6, 3, generator=g), "features": torch.rand(2, 5, 6, 7, generator=g)}
    checked(rendering.composite)(weights, values, samples.deltas, samples.t, background=0.5)
    checked(rendering.distortion_loss)(weights, samples.edges)

    wrong = [
        lambda: checked(rendering.render_rays)(toy_field, origins, directions[:, :4], 0.5, 4.0, num_coarse=6),
        lambda: checked(rendering.render_rays)(toy_field, origins, torch.ones(2, 5, 4), 0.5, 4.0, num_coarse=6),
        lambda: checked(rendering.stratified_samples)(origins, torch.full((5,), 0.5), 4.0, 6),
        lambda: checked(rendering.importance_samples)(samples.edges, torch.rand(2, 5, 7, 1), 4),  # as many bins as edges
        lambda: checked(rendering.merge_samples)(samples, fine_t[..., 0]),
        lambda: checked(rendering.composite)(weights, values, samples.edges, samples.t),
        lambda: checked(rendering.composite)(weights, values, samples.deltas, samples.t, background=torch.ones(4)),
        lambda: checked(rendering.distortion_loss)(samples.edges, weights),
    ]
    for call in wrong:
        with pytest.raises(TypeCheckError):
            call()


def test_camera_annotations_hold_at_runtime(checked):
    g = torch.Generator().manual_seed(1)
    c2w = cameras.look_at(torch.randn(3, 3, generator=g, dtype=torch.float64) * 3)
    K = checked(cameras.normalized_intrinsics)(torch.full((3,), 40.0), 50.0, 32.0, 24.0, 64, 48).double()
    points = 0.3 * torch.randn(3, 10, 3, generator=g, dtype=torch.float64)
    uv, depth = checked(cameras.project)(points, c2w, K)
    origins, directions = checked(cameras.rays)(c2w, K, uv)
    distance = (points - origins).norm(dim=-1)
    torch.testing.assert_close(checked(cameras.z_depth)(distance, directions, c2w), depth)
    torch.testing.assert_close(checked(cameras.world_to_camera)(points, c2w)[..., 2], depth)
    checked(cameras.image_rays)(c2w, K, 4, 5)
    checked(cameras.patch_rays)(c2w, K, 6, 8, torch.tensor([0, 1, 2]), 2, 3)
    checked(cameras.random_pixel_rays)(c2w, K, 6, 8, 5)
    checked(cameras.pixel_grid)(3, 4)
    checked(cameras.depth_points)(torch.ones(3, 4, 5, dtype=torch.float64), c2w, K)
    R = checked(cameras.matrix_from_quaternion)(checked(cameras.quaternion_from_matrix)(c2w[:, :3, :3]))
    torch.testing.assert_close(R, c2w[:, :3, :3])
    assert checked(cameras.interpolate_poses)(c2w[0], c2w[1], torch.linspace(0, 1, 7, dtype=torch.float64)).shape == (7, 4, 4)
    checked(cameras.pytorch3d_to_opencv)(*checked(cameras.opencv_to_pytorch3d)(c2w))
    checked(cameras.opengl_to_opencv)(checked(cameras.opencv_to_opengl)(c2w))
    checked(cameras.intrinsics_from_pytorch3d_ndc)(*checked(cameras.intrinsics_to_pytorch3d_ndc)(K, 64, 48), 64, 48)
    checked(cameras.pixel_intrinsics)(K, 64, 48)
    checked(cameras.orbit)(5, 3.0, 20.0)
    checked(cameras.intrinsics_from_fov)(50.0)

    wrong = [
        lambda: checked(cameras.rays)(c2w, K, points),  # 3-D points where pixel coordinates belong
        lambda: checked(cameras.rays)(K, c2w, uv),
        lambda: checked(cameras.project)(points[:2], c2w, K),
        lambda: checked(cameras.z_depth)(distance[..., None], directions, c2w),
        lambda: checked(cameras.depth_points)(torch.ones(3, 20, dtype=torch.float64), c2w, K),  # flattened depth
        lambda: checked(cameras.quaternion_from_matrix)(c2w),
        lambda: checked(cameras.look_at)(c2w[:, :3, 3], torch.zeros(2, 3, dtype=torch.float64)),
    ]
    for call in wrong:
        with pytest.raises(TypeCheckError):
            call()


def test_field_annotations_hold_at_runtime(checked):
    g = torch.Generator().manual_seed(2)
    B, V, C, R, S = 2, 3, 4, 5, 6
    c2w = cameras.orbit(B * V, 3.0, 20.0).unflatten(0, (B, V))
    K = cameras.intrinsics_from_fov(60.0).expand(B, V, 3, 3)
    feature_maps = torch.randn(B, V, C, 8, 8, generator=g)
    points = 0.3 * torch.randn(B, R, S, 3, generator=g)
    directions = torch.nn.functional.normalize(torch.randn(B, R, S, 3, generator=g), dim=-1)
    t, latent = torch.tensor([10.0, 700.0]), torch.randn(B, 7, generator=g)
    net = PixelAlignedField(C, width=16, blocks=2, mean_after=1, direction_frequencies=2, out_features=3, global_dim=7)
    forward = checked(PixelAlignedField.forward)
    out = forward(net, points, directions, feature_maps, c2w, K, t, latent)
    assert out["features"].shape == (B, R, S, 3)
    forward(net, points, directions, feature_maps, c2w, K, torch.tensor([10, 700]), latent)  # integer timesteps
    checked(field_module.sample_pixel_features)(feature_maps, points[:, None].expand(B, V, R, S, 3), c2w, K)
    for include_input in (True, False):
        checked(field_module.positional_encoding)(points, 4, include_input)
    checked(PixelAlignedField.bind)(net, feature_maps, c2w, K, t, latent)

    wrong = [
        lambda: forward(net, points, directions, feature_maps, c2w, K, t[:1], latent),
        lambda: forward(net, points, directions[:, :2], feature_maps, c2w, K, t, latent),
        lambda: forward(net, points, directions, feature_maps, c2w[:, :2], K, t, latent),
        lambda: forward(net, points, directions, feature_maps[:, 0], c2w, K, t, latent),
        lambda: forward(net, points, directions, feature_maps, c2w, K, t, latent[0]),
        lambda: checked(field_module.sample_pixel_features)(feature_maps, points, c2w, K),  # no view dimension
    ]
    for call in wrong:
        with pytest.raises(TypeCheckError):
            call()
