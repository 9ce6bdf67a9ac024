"""The zoning solver against the naive float64 reference, and the math properties of docs/method.md §8."""

from __future__ import annotations

import math

import pytest
import reference as ref
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lzn_core import _posterior, zoning
from lzn_core.alignment import alignment_loss
from lzn_core.latent import sample_prior, time_grid

F64 = torch.float64


def _data(n=12, q=3, b=None, dtype=F64, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    anchors = scale * torch.randn(n, q, generator=gen, dtype=F64)
    noise = torch.randn(b or n, q, generator=gen, dtype=F64)
    weights = torch.rand(n, generator=gen, dtype=F64) + 0.1
    return anchors.to(dtype), noise.to(dtype), weights.to(dtype)


# ----------------------------------------------------------------------------- agreement with the reference


@pytest.mark.parametrize("g", [1e-4, 1e-2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunk", [None, 5])
def test_latents_euler_matches_reference(g, weighted, chunk):
    anchors, noise, w = _data()
    w = w if weighted else None
    z = zoning.latents(anchors, noise, g=g, steps=20, weights=w, chunk=chunk, alpha=0.7)
    expected = ref.latents_euler(anchors, noise, g=g, steps=20, weights=w, alpha=0.7)
    assert (z - expected).abs().max().item() <= 1e-9


@pytest.mark.parametrize("weighted", [False, True])
def test_latents_dpm_matches_reference(weighted):
    anchors, noise, w = _data()
    w = w if weighted else None
    for steps in (1, 2, 3, 20):
        z = zoning.latents(anchors, noise, g=1e-3, steps=steps, solver="dpm", weights=w)
        expected = ref.latents_dpm(anchors, noise, g=1e-3, steps=steps, weights=w)
        assert (z - expected).abs().max().item() <= 1e-9, steps


def test_latents_index_matches_reference():
    anchors, _, w = _data()
    gen = torch.Generator().manual_seed(3)
    index = torch.tensor([3, 3, 0, 11, 7])
    noise = torch.randn(5, 3, generator=gen, dtype=F64)
    z = zoning.latents(anchors, noise, g=1e-3, steps=20, weights=w, index=index, chunk=2)
    expected = ref.latents_euler(anchors, noise, g=1e-3, steps=20, weights=w, index=index)
    assert z.shape == (5, 3)
    assert (z - expected).abs().max().item() <= 1e-9


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunk", [None, 4])
def test_assign_matches_reference(weighted, chunk):
    anchors, noise, w = _data(b=9)
    w = w if weighted else None
    targets = torch.randint(0, 12, (9,), generator=torch.Generator().manual_seed(1))
    out = zoning.assign(noise, anchors, steps=20, weights=w, targets=targets, chunk=chunk)
    final, probs, tp = ref.assign(noise, anchors, steps=20, weights=w, targets=targets)
    assert out.target_probs.shape == (20, 9) and out.probs.shape == (9, 12)
    assert (out.final - final).abs().max().item() <= 1e-9
    assert (out.probs - probs).abs().max().item() <= 1e-9
    assert (out.target_probs - tp).abs().max().item() <= 1e-9
    assert zoning.assign(noise, anchors, steps=20, weights=w).target_probs is None


def _pipeline(module, anchors0, anchors1, noise, weights, *, g, kind, chunk=None):
    """latents over anchors0 -> assign over anchors1 -> alignment loss (+ terms on final and probs)."""
    targets = torch.arange(anchors1.shape[0])
    if module is zoning:
        z = zoning.latents(anchors0, noise, g=g, steps=10, chunk=chunk)
        out = zoning.assign(z, anchors1, steps=10, weights=weights, targets=targets, chunk=chunk)
        final, probs, tp = out.final, out.probs, out.target_probs
    else:
        z = ref.latents_euler(anchors0, noise, g=g, steps=10)
        final, probs, tp = ref.assign(z, anchors1, steps=10, weights=weights, targets=targets)
    loss = (
        alignment_loss(tp, kind=kind)
        + 0.1 * (final**2).mean()
        + (probs * torch.arange(probs.shape[1])).mean()
    )
    return loss, z


@pytest.mark.parametrize("g", [1e-4, 1e-2])
@pytest.mark.parametrize("kind", ["log", "prob"])
def test_gradients_match_reference(g, kind):
    a0, noise, w = _data(n=10, q=4, scale=1.0, seed=5)
    a1 = a0 + 0.3 * torch.randn(10, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    grads = []
    for module in (zoning, ref):
        leaves = [t.clone().requires_grad_(True) for t in (a0, a1, noise, w)]
        loss, _ = _pipeline(module, *leaves, g=g, kind=kind, chunk=3 if module is zoning else None)
        grads.append((loss.detach(), torch.autograd.grad(loss, leaves)))
    (loss_a, ga), (loss_b, gb) = grads
    assert abs(loss_a - loss_b).item() <= 1e-9
    for name, x, y in zip(("anchors0", "anchors1", "noise", "weights"), ga, gb, strict=True):
        assert x.abs().max() > 0, name
        assert (x - y).abs().max().item() <= 1e-9 * max(1.0, y.abs().max().item()), name


@pytest.mark.parametrize("g", [1e-3, 1e-2])
def test_float32_matches_float64_reference(g):
    """float32 end to end vs the float64 reference (documented tolerances).

    Measured: g = 1e-3: latents 9e-5 abs, loss 8e-6, gradients <= 1.5e-3 of their max;
    g = 1e-2: 7e-6, 4e-6, 4e-4. (g = 1e-4: see ``test_float32_small_g``.)
    """
    a0, noise, w = _data(n=10, q=4, scale=1.0, seed=5)
    a1 = a0 + 0.3 * torch.randn(10, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    out = []
    for module, dtype in ((zoning, torch.float32), (ref, F64)):
        leaves = [t.to(dtype).requires_grad_(True) for t in (a0, a1, noise, w)]
        loss, z = _pipeline(module, *leaves, g=g, kind="log")
        grads = torch.autograd.grad(loss, leaves)
        out.append((loss.detach().double(), z.detach().double(), [t.double() for t in grads]))
    (l32, z32, g32), (l64, z64, g64) = out
    assert (z32 - z64).abs().max().item() <= 3e-4
    assert abs(l32 - l64).item() <= 1e-4 * max(1.0, abs(l64.item()))
    for x, y in zip(g32, g64, strict=True):
        assert (x - y).abs().max().item() <= 3e-3 * y.abs().max().item()


def test_float32_small_g():
    """g = 1e-4 in float32: x_g = (1−g)·a + g·ε keeps ε only to ~6e-4 relative, so latents are ~1e-3 off.

    The alignment loss downstream is ill-conditioned (log of P ~ 1e-20 at the max): feeding it latents
    that differ by 1e-3 moves its gradients by several % in float64 too, so the two halves are checked
    separately: latents (and their gradients) to 2e-3, assign on identical latents to 1e-5.
    """
    a0, noise, _ = _data(n=10, q=4, scale=1.0, seed=5)
    a1 = a0 + 0.3 * torch.randn(10, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    c = torch.randn(10, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    res = []
    for module, dtype in ((zoning, torch.float32), (ref, F64)):
        a, e = a0.to(dtype).requires_grad_(True), noise.to(dtype).requires_grad_(True)
        z = (
            module.latents_euler(a, e, g=1e-4, steps=10)
            if module is ref
            else zoning.latents(a, e, g=1e-4, steps=10)
        )
        res.append([z.detach(), *torch.autograd.grad((z * c.to(dtype)).sum(), (a, e))])
    z64 = res[1][0]
    for dtype in (torch.float32, F64):
        b, x = a1.to(dtype).requires_grad_(True), z64.to(dtype).requires_grad_(True)
        out = zoning.assign(x, b, steps=10, targets=torch.arange(10))
        loss = alignment_loss(out.target_probs, cutoff=0.0)
        res.append([out.target_probs.detach(), out.final.detach(), *torch.autograd.grad(loss, (b, x))])
    for (got, want), tol in ((res[:2], 2e-3), (res[2:], 1e-5)):
        for x, y in zip(got, want, strict=True):
            assert (x.double() - y.double()).abs().max().item() <= tol * y.abs().max().item()


def test_dtype_and_device_are_kept():
    anchors, noise, _ = _data(dtype=torch.float32)
    z = zoning.latents(anchors, noise, steps=4)
    out = zoning.assign(z, anchors, steps=4, targets=torch.arange(12))
    assert z.dtype == out.final.dtype == out.probs.dtype == out.target_probs.dtype == torch.float32
    assert z.device == anchors.device


# ----------------------------------------------------------------------------- the custom step


@pytest.mark.parametrize("tau", [0.9, 0.3, 0.05])
def test_gradcheck_custom_step(tau):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=gen, dtype=F64, requires_grad=True)
    anchors = torch.randn(7, 3, generator=gen, dtype=F64, requires_grad=True)
    log_w = torch.log_softmax(torch.randn(7, generator=gen, dtype=F64), 0).requires_grad_(True)
    targets = torch.tensor([0, 6, 2, 2, 5])

    def step(x, anchors, log_w):
        m, pt, p = _posterior.mean(x, anchors, log_w, tau, targets=targets, want_probs=True, chunk=2)
        return m, pt, p

    assert torch.autograd.gradcheck(step, (x, anchors, log_w))
    assert torch.autograd.gradcheck(lambda x, a: zoning.velocity(x, tau, a), (x, anchors))


def test_saturated_backward_float32():
    """At τ = 1e-4 the logits are ×1e8; the shifted softmax backward keeps float32 gradients right."""
    gen = torch.Generator().manual_seed(4)
    anchors = torch.randn(16, 8, generator=gen, dtype=F64)
    x = 0.9999 * anchors[:6] + 1e-4 * torch.randn(6, 8, generator=gen, dtype=F64)
    dm = torch.randn(6, 8, generator=gen, dtype=F64)
    grads = []
    for dtype in (torch.float32, F64):
        xx, aa = x.to(dtype).requires_grad_(True), anchors.to(dtype).requires_grad_(True)
        v = zoning.velocity(xx, 1e-4, aa)
        grads.append(torch.autograd.grad((v * dm.to(dtype)).sum(), (xx, aa)))
    for g32, g64 in zip(*grads, strict=True):
        assert (g32.double() - g64).abs().max().item() <= 1e-3 * g64.abs().max().item()


def test_zero_weights_give_zero_probability_and_finite_gradients():
    anchors, noise, _ = _data()
    w = torch.ones(12, dtype=F64)
    w[[2, 5]] = 0.0
    anchors = anchors.requires_grad_(True)
    out = zoning.assign(noise, anchors, steps=10, weights=w, targets=torch.zeros(12, dtype=torch.long))
    assert out.probs[:, [2, 5]].abs().max().item() == 0.0
    out.target_probs.sum().backward()
    assert torch.isfinite(anchors.grad).all()


# ----------------------------------------------------------------------------- no subnormals (docs/method.md §8)


class _SubnormalCount(TorchDispatchMode):
    """Counts, per op, the subnormal entries of the floating outputs of every op run under it.

    Views and ``empty`` factories are skipped (they show uninitialised memory, not results);
    every tensor an op reads is the output of an earlier op or an input made by the test, so
    this also covers the operands of every GEMM.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not (func.is_view or "empty" in func.name()):
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    a = t.detach().abs()
                    n = int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())
                    if n:
                        self.found[func.name()] = self.found.get(func.name(), 0) + n
        return out


@pytest.mark.parametrize("dtype, small", [(torch.float32, 1e-20), (F64, 1e-160)])
def test_subnormal_count_sees_a_known_subnormal_forward_and_backward(dtype, small):
    """Positive controls of :class:`_SubnormalCount` (an empty count must mean "none", not "blind").

    Forward: x·small·small for 5 entries of x = 1 is 5 subnormals of one multiplication (small² lies
    below the dtype's smallest normal but above 0). Backward: y = x·small is normal, and the gradient
    of y·g with g = small (given outside the mode) is x's gradient small·small: 5 subnormals made
    by the backward's multiplication, none by the forward.
    """
    tiny = torch.finfo(dtype).tiny
    assert 0 < small * small < tiny
    x = torch.ones(5, dtype=dtype, requires_grad=True)
    scale = torch.full((5,), small, dtype=dtype)
    count = _SubnormalCount()
    with count:
        _ = (x * small) * scale
    assert count.found == {"aten::mul.Tensor": 5}
    count = _SubnormalCount()
    with count:
        y = x * scale
    assert count.found == {}
    count = _SubnormalCount()
    with count:
        (grad,) = torch.autograd.grad(y, x, grad_outputs=scale)
    assert sum(count.found.values()) == 5 and all(n == 5 for n in count.found.values())
    assert bool(((grad > 0) & (grad < tiny)).all())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("tau", [1e-4, 1e-2, 0.3])
def test_kernel_has_no_subnormals(dtype, tau):
    """Every op of the kernel, forward and backward, gives normal numbers or exact zeros.

    τ = 1e-4 with far anchors is the saturated case: nearly every entry of the (chunk, N) blocks
    is exp of a hugely negative number. The old floor (log(tiny) + 1 before ``exp``) left them at
    ~3e-38, and their products with the gradients in backward were subnormal (28x slower GEMMs
    on some CPUs). Checked: logits, E, [Σ E·a, Z], P, the target probabilities, G, dlogits and
    the gradients, in every (chunk, N) block.
    """
    gen = torch.Generator().manual_seed(8)
    anchors = (10 * torch.randn(40, 6, generator=gen, dtype=F64)).to(dtype).requires_grad_(True)
    start = torch.randint(0, 40, (24,), generator=gen)
    noise = torch.randn(24, 6, generator=gen, dtype=F64).to(dtype)
    x = ((1 - tau) * anchors.detach()[start] + tau * noise).requires_grad_(True)
    log_w = torch.log_softmax(torch.randn(40, generator=gen, dtype=F64), 0).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 40, (24,), generator=gen)
    dm = torch.randn(24, 6, generator=gen, dtype=F64).to(dtype)
    dprobs = torch.randn(24, 40, generator=gen, dtype=F64).to(dtype)
    count = _SubnormalCount()
    with count:
        m, pt, p = _posterior.mean(x, anchors, log_w, tau, targets=targets, want_probs=True, chunk=10)
        loss = (m * dm).sum() - torch.log(pt).mean() + (p * dprobs).sum()
        grads = torch.autograd.grad(loss, (x, anchors, log_w))
    assert count.found == {}
    assert all(bool(torch.isfinite(g).all()) and g.abs().max() > 0 for g in grads)


def test_softmax_backward_has_no_subnormals_near_the_floor():
    """Two entries just above the floor (E ≈ 1.3e-19 and 1.6e-19, float32) and dm ⊥ a_1 − a_0.

    Then G_1 − G_0 = 0 exactly and the small row term r ≈ p_2·G_2 ≈ 1.5e-21 is all that reaches
    dlogits_1 = p_1·(0 − r) ≈ 2e-40: subnormal, in p ⊙ (G − r) as in p ⊙ G − p·r. The kernel puts
    such a row term (|r/Z| < √tiny) on the dominant entry alone. The gradient is still right.
    """
    res = []
    for dtype in (torch.float32, F64):
        x = torch.zeros(1, 2, dtype=dtype, requires_grad=True)  # τ = 0.5: logit_j = −‖a_j‖²/2
        anchors = torch.tensor(
            [[0.0, 0.0], [0.0, 87.0**0.5], [86.5**0.5, 0.0]], dtype=dtype, requires_grad=True
        )
        count = _SubnormalCount()
        with count:
            m, _, _ = _posterior.mean(x, anchors, None, 0.5)
            res.append(torch.autograd.grad(m[0, 0] * 1e-3, (x, anchors)))
        if dtype == torch.float32:
            assert count.found == {}
    for g32, g64 in zip(*res, strict=True):
        assert g64.abs().max() > 0
        assert (g32.double() - g64).abs().max().item() <= 1e-4 * g64.abs().max().item()


def test_training_iteration_has_no_subnormals():
    """latents + assign + log alignment loss + backward, float32, far anchors: no op yields a subnormal."""
    gen = torch.Generator().manual_seed(9)
    a0 = (5 * torch.randn(48, 8, generator=gen)).requires_grad_(True)
    a1 = (a0.detach() + 2 * torch.randn(48, 8, generator=gen)).requires_grad_(True)
    count = _SubnormalCount()
    with count:
        z = zoning.latents(a0, g=1e-4, steps=10, chunk=16, generator=gen)
        out = zoning.assign(z, a1, steps=10, targets=torch.arange(48), chunk=16)
        alignment_loss(out.target_probs, kind="log").backward()
    assert count.found == {}
    assert a0.grad.abs().max() > 0 and a1.grad.abs().max() > 0


@pytest.mark.parametrize("x0", [15.0, 30.0])
def test_target_below_the_floor_keeps_its_probability_and_gradient(x0):
    """A target whose E is floored to 0 (P < √tiny) still gets its P and its log-loss gradient.

    Anchors ±1 (q = 1), τ = 0.5: the logits differ by 4x, so at x = 15 P(−1 | x) = σ(−60) ≈ 9e-27,
    below float32's floor 2^-63 ≈ 1.1e-19 but normal: float32 must match float64 (where it is
    kept). At x = 30, σ(−120) underflows float32: P is clamped at e·tiny and the gradient of
    −log P still is the true one, 4·(1 − P) ≈ 4, as float64 gives.
    """
    res = []
    for dtype in (torch.float32, F64):
        x = torch.tensor([[x0]], dtype=dtype, requires_grad=True)
        anchors = torch.tensor([[1.0], [-1.0]], dtype=dtype, requires_grad=True)
        _, pt, _ = _posterior.mean(x, anchors, None, 0.5, targets=torch.tensor([1]))
        res.append((pt.detach().double(), *torch.autograd.grad(-torch.log(pt).sum(), (x, anchors))))
    (p32, gx32, ga32), (p64, gx64, ga64) = res
    if x0 == 15.0:
        assert 0 < p32.item() < 2.0**-63 and abs(p32.item() / p64.item() - 1) <= 1e-4
    else:
        assert p32.item() == pytest.approx(math.e * torch.finfo(torch.float32).tiny, rel=1e-5)
    assert gx64.item() == pytest.approx(4.0)
    assert (gx32.double() - gx64).abs().max().item() <= 1e-5 * gx64.abs().max().item()
    assert (ga32.double() - ga64).abs().max().item() <= 1e-5 * ga64.abs().max().item()


def test_gradients_reach_anchors_and_noise_from_both_directions():
    anchors, noise, _ = _data(dtype=torch.float32)
    a0 = anchors.clone().requires_grad_(True)
    a1 = anchors.clone().requires_grad_(True)
    eps = noise.clone().requires_grad_(True)
    z = zoning.latents(a0, eps, steps=5)
    out = zoning.assign(z, a1, steps=5, targets=torch.arange(12))
    alignment_loss(out.target_probs).backward()
    for t in (a0, a1, eps):
        assert t.grad is not None and t.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- properties (docs/method.md §8)


def test_dpm_20_agrees_with_euler_2000():
    """Measured: max |DPM(20) − Euler(2000)| = 8.5e-3 on this problem (Euler 2000 itself is ~1.3e-3 off)."""
    anchors, noise, _ = _data()
    dpm = zoning.latents(anchors, noise, g=1e-3, steps=20, solver="dpm")
    euler = zoning.latents(anchors, noise, g=1e-3, steps=2000)
    euler20 = zoning.latents(anchors, noise, g=1e-3, steps=20)
    assert (dpm - euler).abs().max().item() <= 2e-2
    assert (dpm - euler).abs().max() < 0.2 * (euler20 - euler).abs().max()


def test_latents_are_gaussian_for_far_anchors():
    n, q = 2000, 4
    gen = torch.Generator().manual_seed(7)
    anchors = 25.0 + 3.0 * torch.randn(n, q, generator=gen)
    z = zoning.latents(anchors, g=1e-3, steps=20, solver="dpm", generator=gen).double()
    se = 1.0 / math.sqrt(n)
    assert z.mean(0).abs().max().item() < 5 * se
    cov = torch.cov(z.t())
    assert (cov - torch.eye(q, dtype=F64)).abs().max().item() < 5 * math.sqrt(2.0) * se


def test_round_trip_float32():
    """assign(latents(A)).probs argmax = identity for >= 95% of anchors (N=512, q=16, g=1e-3, 300 steps)."""
    gen = torch.Generator().manual_seed(8)
    anchors = torch.randn(512, 16, generator=gen)
    z = zoning.latents(anchors, g=1e-3, steps=300, generator=gen)
    out = zoning.assign(z, anchors, steps=300)
    hit = (out.probs.argmax(1) == torch.arange(512)).float().mean().item()
    assert hit >= 0.95


def test_wrong_zone_rate_1d():
    """Theorem 1: anchors ±1 in 1-D, g = 0.5: P(wrong zone) = Φ(−1) = 0.1587.

    B = 20000 draws: SE = sqrt(p(1−p)/B) = 0.0026; the test accepts ±4 SE (±0.0104, > 99.99%).
    """
    b, g = 20000, 0.5
    gen = torch.Generator().manual_seed(9)
    anchors = torch.tensor([[-1.0], [1.0]], dtype=F64)
    index = torch.randint(0, 2, (b,), generator=gen)
    z = zoning.latents(anchors, g=g, steps=50, solver="dpm", index=index, generator=gen)
    out = zoning.assign(z, anchors, steps=200)
    landed = (out.final - anchors.t()).abs().argmin(1)
    rate = (landed != index).double().mean().item()
    expected = 0.5 * math.erfc(1.0 / math.sqrt(2.0))
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / b)


def test_probs_uniform_at_one_and_one_hot_near_zero():
    anchors, noise, w = _data()
    p1 = zoning.posterior(noise, 1.0, anchors)
    assert torch.allclose(p1, torch.full_like(p1, 1 / 12), atol=1e-15)
    pw = zoning.posterior(noise, 1.0, anchors, weights=w)
    assert torch.allclose(pw, (w / w.sum()).expand(12, 12), atol=1e-15)
    tau = 1e-3
    x = (1 - tau) * anchors + tau * noise
    p0 = zoning.posterior(x, tau, anchors, weights=w)
    assert torch.allclose(p0, torch.eye(12, dtype=F64), atol=1e-9)
    out = zoning.assign(noise, anchors, steps=100)
    assert (out.probs.max(1).values > 0.99).all()


def test_velocity_matches_reference():
    anchors, noise, w = _data()
    for tau in (1.0, 0.5, 1e-3):
        v = zoning.velocity(noise, tau, anchors, weights=w)
        assert (v - ref.velocity(noise, tau, anchors, w)).abs().max().item() <= 1e-9 * max(1.0, 1 / tau)


# ----------------------------------------------------------------------------- latent.py


def test_time_grid_and_prior():
    assert time_grid(4, 0.2) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert time_grid(4, direction="reverse") == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert sample_prior(3, 5, dtype=F64).shape == (3, 5)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        time_grid(0)
    with pytest.raises(ValueError, match=r"g must be in \(0, 1\)"):
        time_grid(3, 1.0)
    with pytest.raises(ValueError, match="direction must be"):
        time_grid(3, 0.1, "sideways")
    with pytest.raises(ValueError, match="q must be >= 1"):
        sample_prior(3, 0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        sample_prior(-1, 2)


# ----------------------------------------------------------------------------- bad arguments


def test_bad_arguments():
    anchors, noise, w = _data()
    cases = [
        (lambda: zoning.latents(anchors[0]), "anchors must be a 2-D tensor"),
        (lambda: zoning.latents(anchors.long()), "anchors must be float32 or float64"),
        (lambda: zoning.latents(anchors[:0]), "anchors must be non-empty"),
        (lambda: zoning.latents(anchors, noise[:, :2]), r"noise must be \(B, q\) with q = 3"),
        (lambda: zoning.latents(anchors, noise[:5]), "noise must have 12 rows"),
        (lambda: zoning.latents(anchors, noise.float()), "must match the anchors' dtype"),
        (lambda: zoning.latents(anchors, g=0.0), r"g must be in \(0, 1\)"),
        (lambda: zoning.latents(anchors, alpha=-1.0), "alpha must be >= 0"),
        (lambda: zoning.latents(anchors, steps=0), "steps must be a positive int"),
        (lambda: zoning.latents(anchors, solver="rk4"), "unknown solver 'rk4'; choose one of euler, dpm"),
        (lambda: zoning.latents(anchors, chunk=0), "chunk must be a positive int"),
        (
            lambda: zoning.latents(anchors, weights=w[:3]),
            "weights must be a 1-D tensor with one entry per anchor",
        ),
        (lambda: zoning.latents(anchors, weights=-w), "weights must be finite, non-negative"),
        (lambda: zoning.latents(anchors, weights=0 * w), "not all zero"),
        (lambda: zoning.latents(anchors, index=torch.tensor([0.5])), "index must be a 1-D integer tensor"),
        (lambda: zoning.latents(anchors, index=torch.tensor([12])), r"index must be in \[0, 12\)"),
        (lambda: zoning.assign(noise[:, :2], anchors), r"x must be \(B, q\)"),
        (lambda: zoning.assign(noise, anchors, targets=torch.arange(3)), "targets must have 12 entries"),
        (
            lambda: zoning.assign(noise, anchors, targets=torch.full((12,), -1)),
            r"targets must be in \[0, 12\)",
        ),
        (lambda: zoning.assign(noise, anchors, steps=2.5), "steps must be a positive int"),
        (lambda: zoning.posterior(noise, 0.0, anchors), r"tau must be in \(0, 1\]"),
        (lambda: zoning.velocity(noise, 1.5, anchors), r"tau must be in \(0, 1\]"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
