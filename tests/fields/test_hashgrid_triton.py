"""The fused Triton hash encoding against the PyTorch one: features, the closed-form Jacobian, the
tables' gradients through both, and a field's normals and training gradients.

Without a GPU the kernels run in Triton's interpreter, on CPU tensors.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when Triton is imported
pytest.importorskip("triton", reason="Triton is not installed: the fused encoding is checked where it is")

from dreamfusion.config import FieldConfig  # noqa: E402
from dreamfusion.fields import build_field, hashgrid_triton  # noqa: E402
from dreamfusion.fields.hashgrid import HashEncoding  # noqa: E402
from dreamfusion.fields.hashgrid_triton import FusedHashEncode  # noqa: E402
from dreamfusion.render.volume import normals_from_density  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True, scope="module")
def _interpreter_on_a_cpu():
    """Without a GPU, the kernels run in Triton's interpreter for this module's tests alone: a
    hash grid elsewhere in the suite keeps its PyTorch path on the CPU."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hashgrid_triton, "INTERPRET_ON_CPU", DEVICE == "cpu")
        yield


def _encoding(features: int) -> HashEncoding:
    torch.manual_seed(2)
    encoding = HashEncoding(levels=5, features=features, log2_size=12, base=4, finest=64)  # dense and hashed
    with torch.no_grad():
        for table in encoding.tables:
            table.normal_()
    return encoding.to(DEVICE)


def _points(n: int = 300) -> torch.Tensor:
    points = torch.rand(n, 3, generator=torch.Generator().manual_seed(4))
    points[:8] = torch.tensor([[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)])
    return points.to(DEVICE)


def _reference_jacobian(encoding: HashEncoding, unit: torch.Tensor, create_graph: bool):
    """Features (N, K) and d features / d unit (N, K, 3), a column at a time by autograd."""
    unit = unit.clone().requires_grad_(True)
    feat = encoding(unit)
    columns = [
        torch.autograd.grad(feat[:, k].sum(), unit, create_graph=create_graph, retain_graph=True)[0]
        for k in range(feat.shape[1])
    ]
    return feat, torch.stack(columns, dim=1)


@pytest.mark.parametrize("features", [1, 2, 3])
def test_fused_features_and_jacobian_are_the_pytorch_encodings(features):
    encoding = _encoding(features)
    unit = _points()
    feat, jac = encoding.fused(unit, jacobian=True)
    reference, reference_jac = _reference_jacobian(encoding, unit, create_graph=False)
    torch.testing.assert_close(feat, reference.detach(), rtol=1e-5, atol=1e-5)
    # Each level's derivative carries its resolution (up to 64 here).
    torch.testing.assert_close(jac, reference_jac, rtol=1e-4, atol=1e-3)


def test_fused_tables_gradients_through_features_and_jacobian():
    """Any loss of the features and the Jacobian: the tables' gradients are the PyTorch ones (which
    reach the Jacobian's part by a double backward)."""
    encoding = _encoding(2)
    unit = _points()
    generator = torch.Generator().manual_seed(5)
    upstream = torch.randn(len(unit), 10, generator=generator).to(DEVICE)
    upstream_jac = torch.randn(len(unit), 10, 3, generator=generator).to(DEVICE)

    def tables_grads(feat, jac):
        loss = (feat * upstream).sum() + (jac * upstream_jac).sum()
        return torch.autograd.grad(loss, list(encoding.tables))

    fused = tables_grads(*encoding.fused(unit, jacobian=True))
    reference = tables_grads(*_reference_jacobian(encoding, unit, create_graph=True))
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def _field_pair():
    cfg = FieldConfig(
        kind="hashgrid",
        hash_levels=4,
        hash_log2_size=10,
        hash_base_resolution=4,
        hash_max_resolution=32,
        hash_kernel="torch",
    )
    torch.manual_seed(3)
    reference = build_field(cfg).to(DEVICE)
    with torch.no_grad():
        for table in reference.encoding.tables:
            table.uniform_(-1.0, 1.0)
    fused = build_field(dataclasses.replace(cfg, hash_kernel="triton")).to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def test_field_normals_and_their_training_gradients_are_the_pytorch_ones():
    reference, fused = _field_pair()
    points = ((_points(400) * 2 - 1) * 0.9 * reference.bound_radius).detach()
    direction = torch.randn(len(points), 3, generator=torch.Generator().manual_seed(6)).to(DEVICE)

    def loss(density, albedo, normals):
        return density.sum() * 1e-3 + albedo.sum() + (normals * direction).sum()

    at = points.clone().requires_grad_(True)
    density, albedo = reference(at)
    normals = normals_from_density(density, at, create_graph=True)
    expected = (density, albedo, normals)
    expected_grads = torch.autograd.grad(loss(*expected), list(reference.parameters()))

    out = fused.forward_with_normals(points, create_graph=True)
    assert out is not None
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(loss(*out), list(fused.parameters()))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)

    # Density alone (the interior loss, exports, the occupancy grid) goes through the fused kernel
    # without its Jacobian, with the tables' gradients.
    def density_grads(f):
        params = [*f.encoding.parameters(), *f.trunk.parameters(), *f.density_head.parameters()]
        return torch.autograd.grad(f.density(points).square().mean(), params)

    for a, b in zip(density_grads(reference), density_grads(fused), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


def test_without_triton_one_line_says_the_pytorch_path_runs(monkeypatch, caplog):
    _, fused = _field_pair()
    monkeypatch.setattr(hashgrid_triton, "_RUNS_ON", {})  # found once per device: find it again
    monkeypatch.setattr(hashgrid_triton, "triton_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert fused.forward_with_normals(_points(10), create_graph=False) is None
        assert fused.forward_with_normals(_points(10), create_graph=False) is None
    lines = [r.getMessage() for r in caplog.records if "Triton" in r.getMessage()]
    assert lines == ["Triton not found: the hash grid runs its PyTorch path (pip install triton)"]


def test_where_triton_cannot_build_the_kernels_one_line_says_so_and_the_pytorch_path_runs(
    monkeypatch, caplog
):
    reference, fused = _field_pair()
    monkeypatch.setattr(hashgrid_triton, "_RUNS_ON", {})

    def no_compiler():
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(hashgrid_triton, "_kernels", no_compiler)
    points = _points(10)
    with caplog.at_level(logging.WARNING):
        assert fused.forward_with_normals(points, create_graph=False) is None
        assert fused.forward_with_normals(points, create_graph=False) is None
        torch.testing.assert_close(fused.density(points), reference.density(points))
    lines = [r.getMessage() for r in caplog.records if "Triton" in r.getMessage()]
    assert lines == [
        "Triton cannot run the fused hash grid here (RuntimeError: Failed to find C compiler. Please "
        "specify via CC environment variable.): the hash grid runs its PyTorch path "
        "(--field.hash-kernel torch skips trying)"
    ]


def test_renders_through_the_fused_path_are_the_pytorch_renders(monkeypatch):
    """A lit training render (normals kept as a graph) and a preview: images, normals and the
    parameters' gradients of an image and orientation loss agree between the two kernels."""
    calls = []
    apply = FusedHashEncode.apply
    monkeypatch.setattr(hashgrid_triton.FusedHashEncode, "apply", lambda *a: calls.append(1) or apply(*a))
    from dreamfusion.config import RenderConfig, ShadingConfig
    from dreamfusion.fields import ConstantBackground
    from dreamfusion.render.renderer import render, render_views
    from dreamfusion.scene.cameras import orbit_cameras
    from dreamfusion.training.regularizers import orientation_loss

    reference, fused = _field_pair()
    background = ConstantBackground((1.0, 1.0, 1.0)).to(DEVICE)
    cameras = orbit_cameras(2, 8).to(DEVICE)
    render_cfg, shading = RenderConfig(samples_per_ray=16, stratified=False), ShadingConfig()
    results = []
    for field in (reference, fused):
        out = render(field, background, cameras, "lambertian", render_cfg, shading)
        loss = out.image.mean() + orientation_loss(out.weights, out.sample_normals, out.directions)
        grads = torch.autograd.grad(loss, list(field.parameters()))
        preview = render_views(field, background, cameras, "lambertian", render_cfg, shading)
        results.append((out.image.detach(), out.normal.detach(), grads, preview.image))
    assert len(calls) == 3  # the training render; the preview, and its normals where a surface shows
    (image, normal, grads, preview), (image_f, normal_f, grads_f, preview_f) = results
    torch.testing.assert_close(image_f, image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(normal_f, normal, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(preview_f, preview, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_f, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_a_cpu_keeps_the_pytorch_path_by_default_and_says_nothing_of_triton(monkeypatch, caplog):
    assert FieldConfig().hash_kernel == "triton"
    field = build_field(dataclasses.replace(_field_pair()[0].cfg, hash_kernel="triton"))
    monkeypatch.setattr(hashgrid_triton, "INTERPRET_ON_CPU", False)
    monkeypatch.setattr(hashgrid_triton, "triton_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert field.forward_with_normals(_points(10).cpu(), create_graph=False) is None
        density, _ = field(_points(10).cpu())
    assert density.shape == (10,)
    assert not [r for r in caplog.records if "Triton" in r.getMessage()]


def test_trying_the_kernels_leaves_the_random_state_and_works_in_inference_mode(monkeypatch):
    monkeypatch.setattr(hashgrid_triton, "_RUNS_ON", {})
    state = torch.random.get_rng_state()
    with torch.inference_mode():
        assert hashgrid_triton.runs_on(torch.device(DEVICE))
    assert torch.equal(torch.random.get_rng_state(), state)
