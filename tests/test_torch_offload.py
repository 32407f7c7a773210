"""``slow_device="cpu"``: the slow weights of CUDA parameters in pinned host memory.

On every machine: the arguments are checked (type and value errors that name
the argument, nothing changed by a refused construction), the option is
refused where torch sees no CUDA device, and the streamed sync
(`lookahead_torch._offload.Stager`) is run on CPU tensors, where its chunks go
through the same steps in order, and compared bit for bit with the plain sync
for staging buffers of several sizes. With a CUDA device
(``benchmarks/gpu_check.sh``): training with the option gives the same bits
as without, the GPU holds no slow copy, and checkpoints, ``slow_weights()``,
rollback and an outer optimizer work.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lookahead_torch import Lookahead, _kernels, _offload  # noqa: E402

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: slow_device='cpu' offloads CUDA parameters (benchmarks/gpu_check.sh)")


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().view(getattr(torch, f"int{8 * t.element_size()}")).numpy()


def _model(device: str = "cpu") -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=g).to(device)) for n in (300, 17)]


# --- argument checks ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [3, 1.0, ["cpu"]])
def test_slow_device_of_the_wrong_type_is_a_type_error(value):
    params = _model()
    with pytest.raises(TypeError, match="slow_device"):
        Lookahead(torch.optim.SGD(params, lr=0.1), slow_device=value)


@pytest.mark.parametrize("value", ["cuda", "meta", "cpu:1", "gpu!"])
def test_slow_device_other_than_cpu_is_a_value_error(value):
    inner = torch.optim.SGD(_model(), lr=0.1)
    with pytest.raises(ValueError, match="slow_device"):
        Lookahead(inner, slow_device=value)
    assert "lookahead_k" not in inner.param_groups[0]  # nothing changed


@pytest.mark.parametrize("value, error", [(1.5, TypeError), (True, TypeError), ("64M", TypeError),
                                          (16, ValueError), (-1, ValueError)])
def test_offload_buffer_bytes_is_checked(value, error):
    with pytest.raises(error, match="offload_buffer_bytes"):
        _offload.check_offload_buffer_bytes(value, torch.device("cpu"))
    with pytest.raises(error, match="offload_buffer_bytes"):
        Lookahead(torch.optim.SGD(_model(), lr=0.1), slow_device="cpu", offload_buffer_bytes=value)


def test_offload_buffer_bytes_without_slow_device_is_refused():
    inner = torch.optim.SGD(_model(), lr=0.1)
    with pytest.raises(ValueError, match="offload_buffer_bytes.*slow_device"):
        Lookahead(inner, offload_buffer_bytes=1 << 20)
    assert "lookahead_k" not in inner.param_groups[0]
    assert _offload.check_offload_buffer_bytes(None, None) == _offload.DEFAULT_STAGING_BYTES
    assert _offload.check_offload_buffer_bytes(1 << 20, torch.device("cpu")) == 1 << 20


def test_slow_device_values_accepted():
    assert _offload.check_slow_device(None) is None
    assert _offload.check_slow_device("cpu") == torch.device("cpu")
    assert _offload.check_slow_device(torch.device("cpu")) == torch.device("cpu")
    assert _offload.check_slow_device("cpu:0") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_slow_device_cpu_is_refused_without_cuda():
    inner = torch.optim.SGD(_model(), lr=0.1)
    with pytest.raises(ValueError, match="no CUDA device") as raised:
        Lookahead(inner, slow_device="cpu")
    assert "drop slow_device" in str(raised.value)
    assert "lookahead_k" not in inner.param_groups[0]  # nothing changed
    Lookahead(inner)  # the same optimizer without the option is fine


@needs_cuda
def test_slow_device_cpu_refuses_cpu_parameters():
    inner = torch.optim.SGD(_model("cpu"), lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] is on cpu"):
        Lookahead(inner, slow_device="cpu")


# --- the streamed sync, on CPU tensors ------------------------------------------------------

def _pairs(seed: int, fast_dtype, slow_dtype):
    rng = np.random.default_rng(seed)
    sizes = (5000, 64, 7, 1, 3 * 1024 + 5, 200)
    fast = [torch.tensor(rng.standard_normal(n)).to(fast_dtype) for n in sizes]
    fast.append(torch.tensor(rng.standard_normal((4, 6, 5, 3))).to(fast_dtype)
                .to(memory_format=torch.channels_last))
    slow = [(f.to(slow_dtype) * 0.5 + 0.25) for f in fast]
    slow[0][:4] = torch.tensor([0.0, -0.0, float("inf"), float("nan")])
    return fast, slow


@pytest.mark.parametrize("buffer_bytes", [2048, 4096 + 512, 64 * 1024, 1 << 20])
@pytest.mark.parametrize("dtypes", [("float32", "float32"), ("bfloat16", "float32"),
                                    ("float64", "float64")])
@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9])
def test_streamed_sync_equals_the_plain_sync(buffer_bytes, dtypes, alpha):
    torch.set_num_threads(1)
    fast_dtype, slow_dtype = (getattr(torch, name) for name in dtypes)
    fast, slow = _pairs(1, fast_dtype, slow_dtype)
    ref_fast, ref_slow = _pairs(1, fast_dtype, slow_dtype)
    _offload.Stager(buffer_bytes).sync_(fast, slow, alpha)
    _kernels.lerp_and_copy_(ref_fast, ref_slow, alpha, _kernels.make_scratch(ref_fast, ref_slow))
    for i, (a, b) in enumerate(zip(fast + slow, ref_fast + ref_slow)):
        assert np.array_equal(_bits(a), _bits(b)), f"tensor {i} differs ({buffer_bytes} B)"
    # Independently of the plain sync: θ is φ rounded to θ's dtype.
    for f, s in zip(fast, slow):
        assert torch.equal(f.isnan(), s.to(f.dtype).isnan())
        assert torch.equal(f.nan_to_num(), s.to(f.dtype).nan_to_num())


def test_streamed_sync_chunks_fit_the_buffer_and_start_aligned():
    stager = _offload.Stager(4096)  # two halves of 2048 bytes: 512 float32 each
    fast, slow = _pairs(2, torch.float32, torch.float32)
    pairs = [(f, s) for f, s in zip(fast, slow)]
    capacity = 512
    chunks = list(stager._chunks(pairs, capacity))
    for chunk in chunks:
        end = 0
        for piece_fast, piece_slow, offset in chunk:
            assert offset % _kernels.PIECE_ALIGN == 0 and offset >= end
            end = offset + piece_slow.numel()
            assert end <= capacity
            assert piece_fast.numel() == piece_slow.numel()
    total = sum(piece.numel() for chunk in chunks for _, piece, _ in chunk)
    assert total == sum(s.numel() for s in slow)  # every element once
    assert stager.buffers() == []  # nothing allocated before a sync
    stager.sync_(fast, slow, 0.5)
    (buffer,) = stager.buffers()
    assert buffer.numel() * buffer.element_size() <= 4096


# --- on a GPU ------------------------------------------------------------------------------

def _train(params, opt, steps: int = 12):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.device, p.dtype) + 0.1 * p.detach()
        opt.step()


@needs_cuda
@pytest.mark.parametrize("dtype, slow_dtype", [(torch.float32, None),
                                               (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_offloaded_training_equals_on_device_bit_for_bit(dtype, slow_dtype, inner):
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
            "adam": lambda ps: torch.optim.Adam(ps, lr=0.01)}[inner]
    runs = []
    for slow_device in (None, "cpu"):
        params = [torch.nn.Parameter(p.detach().to(dtype)) for p in _model("cuda")]
        opt = Lookahead(make(params), k=3, alpha=0.6, slow_dtype=slow_dtype,
                        slow_device=slow_device, offload_buffer_bytes=4096 if slow_device else None)
        _train(params, opt)
        torch.cuda.synchronize()
        runs.append((params, opt))
    (p0, o0), (p1, o1) = runs
    for a, b in zip(p0 + list(o0.slow[0]), p1 + list(o1.slow[0])):
        assert np.array_equal(_bits(a), _bits(b))
    assert all(s.device.type == "cpu" and s.is_pinned() for s in o1.slow[0])


@needs_cuda
def test_offloaded_state_dict_slow_weights_and_rollback():
    params = _model("cuda")
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=2, alpha=0.5, slow_device="cpu",
                    nonfinite="rollback")
    _train(params, opt, 3)
    slow = [s.clone() for s in opt.slow[0]]
    fast = [p.detach().clone() for p in params]
    with opt.slow_weights():
        for p, s in zip(params, slow):
            assert torch.equal(p.detach().cpu(), s)
    for p, f in zip(params, fast):
        assert torch.equal(p.detach(), f)
    state = opt.state_dict()
    params2 = _model("cuda")
    opt2 = Lookahead(torch.optim.SGD(params2, lr=0.1), k=2, alpha=0.5, slow_device="cpu",
                     nonfinite="rollback")
    opt2.load_state_dict(state)
    assert all(torch.equal(a, b) and b.device.type == "cpu" for a, b in zip(slow, opt2.slow[0]))
    with torch.no_grad():
        params[0][0] = float("nan")
    params[0].grad = torch.zeros_like(params[0])
    params[1].grad = torch.zeros_like(params[1])
    opt.step()  # completes the cycle: rolled back to φ
    assert opt.rollbacks == 1
    assert torch.equal(params[0].detach().cpu(), opt.slow[0][0])


@needs_cuda
def test_offloaded_outer_sync_equals_on_device():
    import functools

    outer = functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, nesterov=True)
    runs = []
    for slow_device in (None, "cpu"):
        params = _model("cuda")
        opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=2, outer=outer, slow_device=slow_device)
        _train(params, opt, 6)
        runs.append((params, opt))
    (p0, o0), (p1, o1) = runs
    for a, b in zip(p0 + list(o0.slow[0]), p1 + list(o1.slow[0])):
        assert np.array_equal(_bits(a), _bits(b))


@needs_cuda
def test_offload_keeps_no_slow_copy_on_the_gpu():
    torch.cuda.synchronize()
    n = 1 << 22
    params = [torch.nn.Parameter(torch.zeros(n, device="cuda"))]
    params[0].grad = torch.ones_like(params[0])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=1, slow_device="cpu",
                    offload_buffer_bytes=1 << 20)
    opt.step()
    torch.cuda.synchronize()
    # The staging buffer (1 MiB) and the fused kernel's tables; no slow copy (16 MiB).
    assert torch.cuda.memory_allocated() - before <= (1 << 20) + (1 << 16)


def test_slow_device_with_adaptive_alpha_is_refused():
    inner = torch.optim.SGD(_model(), lr=0.1)
    with pytest.raises(ValueError, match="alpha_mode='adaptive'.*slow_device"):
        Lookahead(inner, slow_device="cpu", alpha_mode="adaptive")
    assert "lookahead_k" not in inner.param_groups[0]


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_offload_sync_wiring_on_cpu_tensors_equals_the_plain_sync(monkeypatch, inner):
    # The optimizer's offloaded sync path (`Stager.sync_` instead of the plain kernel, the
    # placement check against slow_device, the staging buffer as workspace), run on CPU
    # tensors with the CUDA-only admission check bypassed: the streams are the GPU's own,
    # everything else is the same code. Training gives the plain sync's bits.
    monkeypatch.setattr(_offload, "check_offloadable", lambda where, params: None)
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
            "adam": lambda ps: torch.optim.Adam(ps, lr=0.01)}[inner]
    torch.set_num_threads(1)
    runs = []
    for slow_device in (None, "cpu"):
        params = _model()
        opt = Lookahead(make(params), k=3, alpha=0.6, slow_device=slow_device,
                        offload_buffer_bytes=2048 if slow_device else None)
        _train(params, opt)
        runs.append((params, opt))
    (p0, o0), (p1, o1) = runs
    for a, b in zip(p0 + list(o0.slow[0]), p1 + list(o1.slow[0])):
        assert np.array_equal(_bits(a), _bits(b))
    (staging,) = o1._workspace_tensors()  # the staging buffer, within its bound
    assert staging.numel() * staging.element_size() <= 2048
    assert o0._workspace_tensors() == []
