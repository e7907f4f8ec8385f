"""torch.ops.domino.sample: kernel == reference (bit for bit), distribution tests, RNG contract,
torch.compile/opcheck, and bad input."""
import numpy as np
import pytest
import torch

import domino_kernels as dk
from domino_kernels import reference as ref
from domino_kernels.reference.sampling import kept_mask

from .conftest import requires_cuda
from .stats import assert_matches_distribution, assert_rejects_distribution


def make_args(batch, vocab, *, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, seed0=1,
              dtype=torch.float32, device="cpu", scale=3.0, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    logits = (torch.randn(batch, vocab, generator=g) * scale).to(dtype).to(device)
    col = lambda v, dt: (v if isinstance(v, torch.Tensor) else torch.full((batch,), v, dtype=dt)).to(device)  # noqa: E731
    return (logits, col(temperature, torch.float32), col(top_k, torch.int64), col(top_p, torch.float32),
            col(min_p, torch.float32), (torch.arange(batch) * 7919 + seed0).to(device),
            torch.full((batch,), 3, dtype=torch.int64, device=device))


FILTERS = [
    dict(),
    dict(top_k=7),
    dict(top_p=0.7),
    dict(min_p=0.2),
    dict(top_k=20, top_p=0.9, min_p=0.05),
    dict(temperature=0.0),
    dict(temperature=1e-3),
    dict(temperature=5.0, top_k=1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_matches_reference(dtype, filters):
    args = make_args(24, 300, dtype=dtype, **filters)
    out = torch.ops.domino.sample(*args)
    assert out.dtype == torch.int64 and out.shape == (24,)
    assert torch.equal(out, ref.sample(*args))


def test_matches_reference_mixed_rows_and_full_vocab():
    b, v = 6, 151936
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(b, v, generator=g) * 4
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.3, 0.9, 2.0])
    top_k = torch.tensor([0, 0, 50, 0, 1000, 3])
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5, 0.95, 1.0])
    min_p = torch.tensor([0.0, 0.0, 0.1, 0.0, 0.01, 0.0])
    seed, offset = torch.arange(b) + 11, torch.arange(b) * 5
    args = (logits, temperature, top_k, top_p, min_p, seed, offset)
    assert torch.equal(torch.ops.domino.sample(*args), ref.sample(*args))


def test_greedy_ties_lowest_index_and_non_contiguous_rows():
    logits = torch.zeros(3, 10)
    logits[0, [2, 5, 7]] = 4.0
    logits[1, :] = -1.0
    logits[2, 9] = 1.0
    wide = torch.zeros(3, 20)
    wide[:, ::2] = -5
    wide[:, :10] = logits  # a view with row stride 20
    out = dk.sample(wide[:, :10], temperature=0.0, seed=0)
    assert out.tolist() == [2, 0, 9]


def expected_probs(logits_row, temperature, top_k=0, top_p=1.0, min_p=0.0):
    s = (logits_row.astype(np.float32) * (np.float32(1) / np.float32(temperature))).astype(np.float32)
    keep = kept_mask(s, top_k, top_p, min_p)
    p = np.exp(s.astype(np.float64) - s.max()) * keep
    return p / p.sum()


@pytest.mark.parametrize("filters", [dict(), dict(top_k=5), dict(top_p=0.6), dict(min_p=0.15),
                                     dict(top_k=9, top_p=0.8, min_p=0.03)], ids=str)
def test_distribution(filters):
    """2e5 draws from one row (through the batch dimension, one seed per row) follow the
    renormalised filtered distribution; the G-test also rejects the unfiltered law."""
    v, n, t = 16, 200_000, 0.9
    row = np.linspace(-2.0, 2.5, v).astype(np.float32)[np.random.default_rng(0).permutation(v)]
    logits = torch.from_numpy(row).expand(n, v)
    out = dk.sample(logits, temperature=t, seed=torch.arange(n) + 12345, offset=0,
                    top_k=filters.get("top_k"), top_p=filters.get("top_p"), min_p=filters.get("min_p"))
    counts = np.bincount(out.numpy(), minlength=v)
    probs = expected_probs(row, t, filters.get("top_k", 0), filters.get("top_p", 1.0), filters.get("min_p", 0.0))
    assert_matches_distribution(counts, probs, what=f"sample{filters}")
    if filters:
        assert_rejects_distribution(counts, expected_probs(row, t))


def test_distribution_same_seed_different_offsets():
    """One seed, consecutive offsets: successive calls are independent draws of the same law."""
    v, n = 8, 100_000
    row = np.array([0.1, 1.0, -0.5, 2.0, 0.0, 0.3, -1.0, 1.5], dtype=np.float32)
    logits = torch.from_numpy(row).expand(n, v)
    out = dk.sample(logits, temperature=1.0, seed=42, offset=torch.arange(n))
    assert_matches_distribution(np.bincount(out.numpy(), minlength=v), expected_probs(row, 1.0))


def test_rng_contract_reproducible_and_offset_sensitive():
    args = list(make_args(64, 500, temperature=1.0))
    a = torch.ops.domino.sample(*args)
    assert torch.equal(a, torch.ops.domino.sample(*args))
    args[6] = args[6] + 1
    b = torch.ops.domino.sample(*args)
    assert (a != b).float().mean() > 0.5
    args[5] = args[5] + 1
    assert (torch.ops.domino.sample(*args) != b).float().mean() > 0.5


def test_topk_ties_are_kept():
    logits = torch.tensor([[3.0, 1.0, 3.0, 3.0, 0.0, -1.0]]).expand(4000, 6)
    out = dk.sample(logits, temperature=1.0, top_k=2, seed=torch.arange(4000))
    assert set(out.tolist()) == {0, 2, 3}


@pytest.mark.parametrize("row, value, match", [
    (0, "nan", "'logits' row 0 contains NaN"), (1, "inf", "'logits' row 1 contains NaN or \\+inf"),
    (2, "-inf_row", "'logits' row 2 has every logit -inf")])
def test_invalid_rows_raise_on_cpu(row, value, match):
    # CPU tensors raise, naming the argument and the row (CUDA: -1, test_cuda_invalid_rows_...)
    logits = torch.randn(4, 10)
    if value == "-inf_row":
        logits[row, :] = float("-inf")
    else:
        logits[row, 3] = float(value)
    for t in (0.0, 1.0):
        with pytest.raises(ValueError, match=match):
            dk.sample(logits, temperature=t, seed=1)


def test_temperature_that_overflows_the_scaled_logits_raises():
    with pytest.raises(ValueError, match="'temperature' is too small at row 1"):
        dk.sample(torch.ones(2, 10), temperature=torch.tensor([1.0, 1e-45]), seed=1)


def test_minus_inf_entries_are_never_sampled():
    logits = torch.zeros(20000, 5)
    logits[:, [1, 3]] = float("-inf")
    out = dk.sample(logits, temperature=1.0, seed=torch.arange(20000))
    assert set(out.tolist()) == {0, 2, 4}


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=2.0), "min_p"),
])
def test_bad_parameter_values_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        dk.sample(torch.randn(3, 10), **{"seed": 0, **bad})


def test_bad_shapes_and_dtypes_raise():
    args = list(make_args(3, 10))
    op = torch.ops.domino.sample
    with pytest.raises(ValueError, match="'logits'.*dimensions"):
        op(args[0][0], *args[1:])
    with pytest.raises(ValueError, match="'logits'.*dtype"):
        op(args[0].to(torch.int32), *args[1:])
    with pytest.raises(ValueError, match="'logits'.*non-empty"):
        op(torch.empty(3, 0), *args[1:])
    with pytest.raises(ValueError, match="'temperature'.*size 3"):
        op(args[0], args[1][:2], *args[2:])
    with pytest.raises(ValueError, match="'seed'.*dtype"):
        op(*args[:5], args[5].to(torch.int32), args[6])
    with pytest.raises(ValueError, match="'top_k'.*dtype"):
        op(args[0], args[1], args[2].float(), *args[3:])
    with pytest.raises(ValueError, match="'logits'.*unit stride"):
        op(args[0].t().contiguous().t(), *args[1:])


def test_empty_batch():
    out = dk.sample(torch.empty(0, 10), seed=0)
    assert out.shape == (0,) and out.dtype == torch.int64


def test_opcheck():
    args = make_args(5, 40, top_k=3, top_p=0.9, min_p=0.01)
    torch.library.opcheck(torch.ops.domino.sample.default, args)
    none_args = (*args[:2], None, None, None, *args[5:])
    torch.library.opcheck(torch.ops.domino.sample.default, none_args)


def test_torch_compile_fullgraph():
    args = make_args(8, 64, top_k=10)

    @torch.compile(fullgraph=True)
    def f(logits, t, k, p, q, s, o):
        return torch.ops.domino.sample(logits * 1.0, t, k, p, q, s, o) + 0

    assert torch.equal(f(*args), torch.ops.domino.sample(*args))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_cuda_equals_cpu(dtype, filters):
    args = make_args(64, 151936 if filters.get("top_p", 1.0) < 1.0 else 5000, dtype=dtype, **filters)
    cuda_args = [a.cuda() for a in args]
    assert torch.equal(torch.ops.domino.sample(*cuda_args).cpu(), torch.ops.domino.sample(*args))


@requires_cuda
def test_cuda_invalid_rows_give_minus_one():
    logits = torch.randn(5, 10)
    logits[0, 3] = float("nan")
    logits[1, 4] = float("inf")
    logits[2, :] = float("-inf")
    for t in (0.0, 1.0):
        temps = torch.full((5,), t)
        temps[3] = 1e-45 if t else 0.0
        out = dk.sample(logits.cuda(), temperature=temps.cuda(), seed=1).cpu()
        assert out[:3].tolist() == [-1, -1, -1] and out[4] >= 0
        assert out[3].item() == (-1 if t else int(logits[3].argmax()))


@requires_cuda
def test_cuda_invalid_parameters_give_minus_one():
    args = [a.cuda() for a in make_args(4, 50)]
    args[1][0] = -1.0
    args[2][1] = -3
    args[3][2] = 0.0
    out = torch.ops.domino.sample(*args).cpu()
    assert out[:3].tolist() == [-1, -1, -1] and out[3] >= 0


def test_vocabulary_over_the_exact_mass_limit_raises():
    """Row masses are exact uint64 sums only up to V = 2^23: larger vocabularies are refused."""
    big = torch.zeros(1, (1 << 23) + 1)
    with pytest.raises(ValueError, match="'logits'.*2\\^23"):
        dk.sample(big, seed=0)
    with pytest.raises(ValueError, match="'logits'.*2\\^23"):
        dk.verify(torch.zeros(1, 1, dtype=torch.int64), dk.chain_parents(1, 1, "cpu"), big[:, None])
