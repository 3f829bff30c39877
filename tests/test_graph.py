"""sample_many(graph=True): the eager fallback with one warning where a CUDA graph cannot run
(here on CPU: bitwise the eager result), and on a CUDA device (skipped without one) graph
replay against eager, padded last chunks, stride-0 cond, prepare_cond, autocast and the
fallbacks for a per-step callback and an uncapturable denoiser."""

from __future__ import annotations

import warnings
from typing import ClassVar

import pytest
import torch

import diffsample.graph as graph_mod
from diffsample import NoiseSchedule, sample_many

SCH = NoiseSchedule.cosine(200)
E = (6, 3)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Net(torch.nn.Module):
    """x_t [M, 6, 3], t [M], z [M, 4] -> [M, 6, 3]: matmuls, a nonlinearity, the step."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(18 + 4 + 1, 32, generator=g) / 4)
        self.w2 = torch.nn.Parameter(torch.randn(32, 18, generator=g) / 6)

    def forward(self, x, t, *, z):
        tt = t[:, None].to(x.dtype).expand(x.shape[0], 1) / 200
        h = torch.cat([x.flatten(1), z.to(x.dtype), tt], dim=1)
        return (torch.tanh(h @ self.w1) @ self.w2).view_as(x)


class PreparedNet(Net):
    """Net with the per-condition hook: z's projection computed once per condition."""

    def prepare_cond(self, *, z):
        return {"zp": z @ self.w1[18:22]}  # [B, 32]

    def forward(self, x, t, *, z=None, zp=None):
        if zp is None:
            return super().forward(x, t, z=z)
        tt = t[:, None].to(x.dtype).expand(x.shape[0], 1) / 200
        h = x.flatten(1) @ self.w1[:18] + zp.to(x.dtype) + tt @ self.w1[22:]
        return (torch.tanh(h) @ self.w2).view_as(x)


def draw(net, z, device, **kw):
    kw.setdefault("timesteps", SCH.timesteps(8))
    return sample_many(
        "ddim", net, E, 5, cond={"z": z}, schedule=SCH, seed=3, device=device, progress=False, **kw
    )


# ---------------------------------------------------------------- CPU: the fallback
def test_graph_on_cpu_warns_once_and_is_the_eager_path():
    net, z = Net(), torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    ref = draw(net, z, "cpu", max_batch=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = draw(net, z, "cpu", max_batch=8, graph=True)
    msgs = [str(w.message) for w in seen]
    assert len(msgs) == 1 and "graph=True needs a CUDA device" in msgs[0], msgs
    assert torch.equal(got, ref)


def test_graph_must_be_a_bool():
    with pytest.raises(TypeError, match="graph: expected True or False"):
        draw(Net(), torch.zeros(2, 4), "cpu", graph="yes")


# ---------------------------------------------------------------- CUDA: replay against eager
def _f32_tol(ref: torch.Tensor) -> dict[str, float]:
    """Replay runs the eager kernels; what differs is round-off: the padded last chunk (another
    row count may pick another GEMM kernel) and the capture stream (cuBLAS promises bitwise
    equality only on one stream). Float32 round-off accumulated over a few steps: tens of
    ulps of the sample scale."""
    eps = torch.finfo(torch.float32).eps
    scale = float(ref.abs().max())
    return {"rtol": 64 * eps, "atol": 64 * eps * max(scale, 1.0)}


@cuda
@pytest.mark.parametrize("max_batch", [35, 8, 6])  # one chunk; 5 chunks, last padded; 6 chunks
@pytest.mark.parametrize("sampler_kw", [{}, {"eta": 1.0}])
def test_graph_matches_eager_on_cuda(max_batch, sampler_kw):
    net = Net().cuda()
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(1)).cuda()
    ref = draw(net, z, "cuda", max_batch=max_batch, **sampler_kw)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = draw(net, z, "cuda", max_batch=max_batch, graph=True, **sampler_kw)
    assert not [w for w in seen if "sample_many" in str(w.message)]  # no fallback on CUDA
    assert got.shape == ref.shape == (5, 7, *E)
    torch.testing.assert_close(got, ref, **_f32_tol(ref))


@cuda
def test_graph_one_condition_prepare_cond_and_autocast_on_cuda():
    net = PreparedNet().cuda()
    z1 = torch.randn(1, 4, generator=torch.Generator().manual_seed(2)).cuda()  # B = 1: stride 0
    ref = draw(net, z1, "cuda", max_batch=2)
    torch.testing.assert_close(draw(net, z1, "cuda", max_batch=2, graph=True), ref, **_f32_tol(ref))
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(1)).cuda()
    ref = draw(net, z, "cuda", max_batch=8)
    torch.testing.assert_close(draw(net, z, "cuda", max_batch=8, graph=True), ref, **_f32_tol(ref))
    if torch.cuda.is_bf16_supported():
        ref = draw(net, z, "cuda", max_batch=8, autocast=torch.bfloat16)
        got = draw(net, z, "cuda", max_batch=8, graph=True, autocast=torch.bfloat16)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)


@cuda
def test_graph_falls_back_for_a_callback_and_an_uncapturable_denoiser():
    net = Net().cuda()
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(1)).cuda()
    ref = draw(net, z, "cuda", max_batch=8)
    steps = []
    with pytest.warns(UserWarning, match="per-step callback"):
        got = draw(net, z, "cuda", max_batch=8, graph=True, callback=lambda d: steps.append(d["i"]))
    assert torch.equal(got, ref) and len(steps) == 5 * 8

    def syncing(x, t, *, z):
        return net(x, t, z=z) * float(t[0] >= 0)  # .item(): a host-device sync per step

    ref = draw(syncing, z, "cuda", max_batch=8)
    with pytest.warns(UserWarning, match="found a host-device sync"):
        got = draw(syncing, z, "cuda", max_batch=8, graph=True)
    torch.testing.assert_close(got, ref, **_f32_tol(ref))


# ---------------------------------------------------------------- the chunk loop, on CPU
class FakeGraph:
    """Stands in for ChunkGraph on CPU: the same static-buffer protocol, eager "replay"."""

    rows_seen: ClassVar[list[int]] = []
    fail: ClassVar[type[Exception] | None] = None  # raise this from capture()

    def __init__(self, run, keys, cond_rows):
        if FakeGraph.fail is graph_mod.HostSyncError:
            raise graph_mod.HostSyncError("called a synchronizing CUDA operation")
        self.run, self.keys, self.cond = run, keys.clone(), dict(cond_rows)
        FakeGraph.rows_seen.append(len(keys))
        self.first = run(self.keys, self.cond).clone()

    def capture(self):
        if FakeGraph.fail is not None:
            raise FakeGraph.fail("operation not permitted when stream is capturing")

    def __call__(self, keys, cond_rows):
        FakeGraph.rows_seen.append(len(keys))
        self.keys.copy_(keys)
        self.cond = dict(cond_rows)
        return self.run(self.keys, self.cond).clone()


@pytest.fixture
def fake_graph(monkeypatch):
    from diffsample import batching

    monkeypatch.setattr(batching, "ChunkGraph", FakeGraph)
    monkeypatch.setattr(batching, "_graph_unavailable", lambda *a: None)
    FakeGraph.rows_seen, FakeGraph.fail = [], None
    return FakeGraph


@pytest.mark.parametrize("B", [1, 7])
def test_graph_chunks_are_padded_to_a_fixed_size_and_the_padding_dropped(fake_graph, B):
    net = Net()
    z = torch.randn(B, 4, generator=torch.Generator().manual_seed(1))
    ref = draw(net, z, "cpu", max_batch=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = draw(net, z, "cpu", max_batch=8, graph=True)
    C = min(8, 5 * B)  # rows per chunk
    assert fake_graph.rows_seen == [C] * -(-5 * B // C)  # every chunk at C rows, last padded
    torch.testing.assert_close(got, ref, **_f32_tol(ref))


@pytest.mark.parametrize(
    "fail,match",
    [(RuntimeError, "could not capture the step loop"), ("sync", "found a host-device sync")],
)
def test_graph_capture_failures_warn_once_and_sample_eagerly(fake_graph, fail, match):
    fake_graph.fail = graph_mod.HostSyncError if fail == "sync" else fail
    net, z = Net(), torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    ref = draw(net, z, "cpu", max_batch=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = draw(net, z, "cpu", max_batch=8, graph=True)
    assert len(seen) == 1 and match in str(seen[0].message)
    torch.testing.assert_close(got, ref, **_f32_tol(ref))


def test_graph_falls_back_for_non_tensor_cond_and_callbacks():
    from diffsample.batching import _graph_unavailable

    cuda_dev = torch.device("cuda")
    if torch.cuda.is_available():  # the checks after the device's
        assert _graph_unavailable(cuda_dev, None, {"z": torch.zeros(1)}) is None
        assert "callback" in _graph_unavailable(cuda_dev, print, {})
        assert "non-tensors for ['k']" in _graph_unavailable(cuda_dev, None, {"k": 3})
    assert "needs a CUDA device" in _graph_unavailable(torch.device("cpu"), None, {})
