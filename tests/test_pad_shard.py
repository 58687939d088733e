"""pad_and_shard / unshard: every backend against the reference (F.pad to full length + chunk + cat).

Tolerance: none. The ops only move data, so every comparison is bitwise (`assert_same_bits`), NaN pads included.
Backends tested on CPU: "cpp" (longrl._C) and "torch"; CUDA tests compare "cuda" with the reference on CUDA
tensors (skipped without a GPU). Without a GPU the CUDA kernels' index math still runs: the .cu file is compiled
with nvcc into a host program that executes the same kernel bodies over the same grid on the CPU.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from helpers import NVCC, non_contiguous, poison_, requires_cuda

from longrl import _backend, ops
from longrl._ops import pad_shard as ps
from longrl._ops.pad_shard import ShardSpec, reference_pad_and_shard, reference_unshard

ROOT = Path(__file__).resolve().parents[1]
CPU_BACKENDS = [
    pytest.param("cpp", marks=pytest.mark.skipif(not _backend.has_extension(), reason="longrl._C not built")),
    "torch",
]
LAYOUTS = ["contiguous", "zigzag"]
SP_SIZES = [1, 2, 3, 4]
LENGTHS = [1, 3, 7, 8, 13, 16]  # includes L < 2*sp, odd, not divisible and exactly divisible
ALL_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.bool,
    torch.uint8,
]
PAD_FOR = {
    torch.float32: -1.5,
    torch.float16: float("nan"),
    torch.bfloat16: 3.0,
    torch.float64: float("-inf"),
    torch.int64: -100,
    torch.int32: 2**31 - 1,
    torch.bool: True,
    torch.uint8: 255,
}


def rand(shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: str = "cpu") -> torch.Tensor:
    """Fresh NaN-free random values of `dtype` (seeded per test)."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    elif dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=g).bool()
    elif dtype == torch.uint8:
        t = torch.randint(0, 255, shape, generator=g).to(dtype)  # 255 is the pad: never in the data
    else:
        t = torch.randint(-1000, 1000, shape, generator=g).to(dtype)
    return t.to(device)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal shape, dtype and bytes (so NaN == NaN and -0.0 != 0.0)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    a = got.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    b = want.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    assert torch.equal(a, b), f"values differ:\n{got}\n{want}"


def all_shards(x, sp, layout, dim, pad, backend):
    """Every rank's shard through the public op, with the spec of rank 0."""
    shards, specs = zip(*(ops.pad_and_shard(x, sp_size=sp, rank=r, dim=dim, layout=layout, pad_value=pad,
                                            backend=backend) for r in range(sp)), strict=True)  # fmt: skip
    assert len(set(specs)) == 1
    return list(shards), specs[0]


# ----------------------------------------------------------------------------------------------------------
# Spec
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sp", SP_SIZES)
@pytest.mark.parametrize("length", [0, *LENGTHS])
def test_spec_geometry_and_positions(layout: str, sp: int, length: int) -> None:
    spec = ShardSpec.make(length=length, dim=1, sp_size=sp, layout=layout)
    n = sp * (2 if layout == "zigzag" else 1)
    assert spec.n_chunks == n and spec.padded_length % n == 0
    assert spec.length <= spec.padded_length < spec.length + n  # least padding
    assert spec.pad == spec.padded_length - length and spec.shard_length * sp == spec.padded_length
    assert spec.chunk_length * n == spec.padded_length
    # positions(r) is what the reference shard of arange(L) holds, with padding as indices >= L
    idx = torch.arange(length, dtype=torch.int64)[None]
    everyone = []
    for r in range(sp):
        pos = spec.positions(r)
        assert pos.dtype == torch.int64 and pos.shape == (spec.shard_length,)
        ref = reference_pad_and_shard(idx, sp, r, 1, layout, -1)[0]
        assert torch.equal(torch.where(pos < length, pos, -1), ref)
        everyone.append(pos)
    assert torch.equal(torch.cat(everyone).sort().values, torch.arange(spec.padded_length))


def test_spec_small_lengths() -> None:
    spec = ShardSpec.make(length=3, dim=1, sp_size=4, layout="zigzag")
    assert (spec.padded_length, spec.chunk_length, spec.shard_length, spec.pad) == (8, 1, 2, 5)
    assert spec.positions(0).tolist() == [0, 7] and spec.positions(3).tolist() == [3, 4]
    assert ShardSpec.make(length=1, dim=0, sp_size=3, layout="contiguous").padded_length == 3


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="layout"):
        ShardSpec(length=4, padded_length=4, dim=0, sp_size=2, layout="ring")
    with pytest.raises(ValueError, match="sp_size"):
        ShardSpec(length=4, padded_length=4, dim=0, sp_size=0, layout="zigzag")
    with pytest.raises(ValueError, match="multiple"):
        ShardSpec(length=4, padded_length=6, dim=0, sp_size=2, layout="zigzag")
    with pytest.raises(ValueError, match="multiple"):
        ShardSpec(length=9, padded_length=8, dim=0, sp_size=2, layout="zigzag")
    with pytest.raises(ValueError, match="rank"):
        ShardSpec.make(length=4, dim=0, sp_size=2, layout="zigzag").positions(2)


# ----------------------------------------------------------------------------------------------------------
# pad_and_shard / unshard against the reference (CPU backends)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sp", SP_SIZES)
@pytest.mark.parametrize("length", LENGTHS)
def test_embeddings_match_reference_and_roundtrip(backend: str, layout: str, sp: int, length: int) -> None:
    x = rand((2, length, 5), torch.float32, seed=length * 10 + sp)
    shards, spec = all_shards(x, sp, layout, 1, -7.0, backend)
    assert spec == ShardSpec.make(length=length, dim=1, sp_size=sp, layout=layout)
    for r, shard in enumerate(shards):
        assert shard.is_contiguous()
        assert_same_bits(shard, reference_pad_and_shard(x, sp, r, 1, layout, -7.0))
        # the padding holds exactly the pad value, the rest exactly x at positions()
        pos = spec.positions(r)
        assert (shard[:, pos >= length] == -7.0).all()
        assert_same_bits(shard[:, pos < length], x[:, pos[pos < length]])
    restored = ops.unshard(shards, spec, backend=backend)
    assert restored.is_contiguous()
    assert_same_bits(restored, x)
    assert_same_bits(ops.unshard(torch.cat(shards, dim=1), spec, backend=backend), x)
    assert_same_bits(reference_unshard(shards, length, sp, 1, layout), x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_dtype(backend: str, dtype: torch.dtype, layout: str) -> None:
    sp, length, pad = 3, 10, PAD_FOR[dtype]
    x = rand((3, length, 4), dtype, seed=7)
    shards, spec = all_shards(x, sp, layout, 1, pad, backend)
    for r, shard in enumerate(shards):
        assert_same_bits(shard, reference_pad_and_shard(x, sp, r, 1, layout, pad))
    assert_same_bits(ops.unshard(shards, spec, backend=backend), x)
    assert_same_bits(ops.unshard(torch.cat(shards, 1), spec, backend=backend), x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_position_ids_labels_and_masks(backend: str, layout: str) -> None:
    sp, length = 4, 11
    cases = [
        (torch.arange(length).expand(3, 2, length).contiguous(), 2, 0),  # mrope position ids [3, B, L]
        (torch.arange(length).expand(3, 2, length), -1, 0),  # the same, stride-0 expanded view, negative dim
        (rand((2, length), torch.int64, seed=1), 1, -100),  # labels [B, L]
        (rand((2, length), torch.bool, seed=2), 1, False),  # attention mask [B, L]
    ]
    for x, dim, pad in cases:
        shards, spec = all_shards(x, sp, layout, dim, pad, backend)
        assert spec.dim == dim % x.dim()
        for r, shard in enumerate(shards):
            assert_same_bits(shard, reference_pad_and_shard(x, sp, r, dim, layout, pad))
        assert_same_bits(ops.unshard(shards, spec, backend=backend), x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs_and_any_dim(backend: str, layout: str) -> None:
    sp = 3
    base = rand((4, 9, 6), torch.bfloat16, seed=3)
    cases = [
        (non_contiguous(base), 1),  # strided last dim
        (base.transpose(0, 1), 0),  # sequence dim is the outermost but not contiguous
        (base.transpose(1, 2), 2),  # sequence dim is the innermost, with a stride
        (base[:, 1:8:2], 1),  # strided sequence dim itself
        (base, 0),
        (base, -1),
    ]
    for x, dim in cases:
        shards, spec = all_shards(x, sp, layout, dim, 0.25, backend)
        for r, shard in enumerate(shards):
            assert_same_bits(shard, reference_pad_and_shard(x, sp, r, dim, layout, 0.25))
        assert_same_bits(ops.unshard(shards, spec, backend=backend), x)
        # non-contiguous shards (every other element of a wider buffer) gather back the same
        strided = [non_contiguous(s) for s in shards]
        assert_same_bits(ops.unshard(strided, spec, backend=backend), x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_negative_dim_equals_positive(backend: str) -> None:
    x = rand((2, 13, 3), torch.float16, seed=4)
    a, spec_a = ops.pad_and_shard(x, sp_size=2, rank=1, dim=-2, backend=backend)
    b, spec_b = ops.pad_and_shard(x, sp_size=2, rank=1, dim=1, backend=backend)
    assert spec_a == spec_b and spec_a.dim == 1
    assert_same_bits(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_sequence(backend: str, layout: str) -> None:
    x = torch.empty(2, 0, 3)
    shards, spec = all_shards(x, 2, layout, 1, 1.0, backend)
    assert spec.padded_length == 0 and all(s.shape == (2, 0, 3) for s in shards)
    assert ops.unshard(shards, spec, backend=backend).shape == (2, 0, 3)


@pytest.mark.skipif(not _backend.has_extension(), reason="longrl._C not built")
def test_backends_agree_on_a_realistic_shape() -> None:
    x = rand((1, 1021, 96), torch.bfloat16, seed=5)
    for r in range(4):
        a, _ = ops.pad_and_shard(x, sp_size=4, rank=r, backend="cpp")
        b, _ = ops.pad_and_shard(x, sp_size=4, rank=r, backend="torch")
        assert_same_bits(a, b)
        assert_same_bits(a, reference_pad_and_shard(x, 4, r, 1, "zigzag", 0))


# ----------------------------------------------------------------------------------------------------------
# Outputs fully written: the functional ops allocate with torch.empty and call these out-variants, so a
# poisoned `out` sees exactly what the kernels write. A skipped pad fill or chunk would leave NaN / sentinels.
# ----------------------------------------------------------------------------------------------------------


def _poisoned_like(shape, dtype, device="cpu"):
    return poison_(torch.empty(shape, dtype=dtype, device=device))


def check_out_variants_fully_written(backend: str, device: str) -> None:
    for dtype, layout, sp, length in [
        (torch.float32, "zigzag", 4, 13),
        (torch.bfloat16, "contiguous", 3, 7),
        (torch.int64, "zigzag", 2, 3),
        (torch.bool, "zigzag", 3, 5),  # bool poison is True: pad with False
    ]:
        x = rand((2, length, 3), dtype, seed=sp * length, device=device)
        pad = False if dtype == torch.bool else 0
        spec = ShardSpec.make(length=length, dim=1, sp_size=sp, layout=layout)
        shards = []
        for r in range(sp):
            out = _poisoned_like((2, spec.shard_length, 3), dtype, device)
            ps.shard_into(out, x, spec, r, pad, backend)
            assert_same_bits(out, reference_pad_and_shard(x.cpu(), sp, r, 1, layout, pad))
            shards.append(out)
        everything = _poisoned_like((2, spec.padded_length, 3), dtype, device)
        ps.shard_into(everything, x, spec, None, pad, backend)
        assert_same_bits(everything, torch.cat(shards, 1))
        for given in (shards, everything):
            out = _poisoned_like((2, length, 3), dtype, device)
            ps.unshard_into(out, given, spec, backend)
            assert_same_bits(out, x)
        for r in range(sp):
            out = _poisoned_like((2, length, 3), dtype, device)
            ps.scatter_into(out, shards[r], spec, r, backend)
            want = torch.zeros_like(x.cpu())
            pos = spec.positions(r)
            want[:, pos[pos < length]] = x.cpu()[:, pos[pos < length]]
            assert_same_bits(out, want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_outputs_fully_written(backend: str) -> None:
    check_out_variants_fully_written(backend, "cpu")


@pytest.mark.skipif(not _backend.has_extension(), reason="longrl._C not built")
def test_compiled_ops_check_out_and_arguments() -> None:
    x = torch.randn(2, 7, 3)
    lib = torch.ops.longrl
    with pytest.raises(RuntimeError, match="layout"):
        lib.pad_and_shard(x, 1, 8, 2, 0, 2, 0)
    with pytest.raises(RuntimeError, match="rank"):
        lib.pad_and_shard(x, 1, 8, 2, 2, 1, 0)
    with pytest.raises(RuntimeError, match="padded_length"):
        lib.pad_and_shard(x, 1, 6, 2, 0, 1, 0)  # 6 is not a multiple of 4 zigzag chunks
    with pytest.raises(RuntimeError, match="shape"):
        lib.pad_and_shard.out(x, 1, 8, 2, 0, 1, 0, out=torch.empty(2, 3, 3))
    with pytest.raises(RuntimeError, match="contiguous"):
        lib.pad_and_shard.out(x, 1, 8, 2, 0, 1, 0, out=torch.empty(2, 3, 4).transpose(1, 2))
    with pytest.raises(RuntimeError, match="dtype"):
        lib.pad_and_shard.out(x, 1, 8, 2, 0, 1, 0, out=torch.empty(2, 4, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="shards"):
        lib.unshard([x[:, :4], x[:, :4], x[:, :4]], 1, 7, 2, 1)
    # a directly built spec with extra padding is honoured
    y = lib.pad_and_shard(x, 1, 16, 2, 1, 1, -1.0)
    assert_same_bits(y, torch.cat([x[:, 4:7], torch.full((2, 5, 3), -1.0)], 1))


# ----------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("layout", "sp", "length"), [("zigzag", 3, 7), ("contiguous", 2, 5), ("zigzag", 4, 3)]
)
def test_gradcheck(backend: str, layout: str, sp: int, length: int) -> None:
    x = rand((2, length, 3), torch.float64, seed=11).requires_grad_()
    spec = ShardSpec.make(length=length, dim=1, sp_size=sp, layout=layout)

    def shard_of(rank: int):
        return lambda t: ops.pad_and_shard(
            t, sp_size=sp, rank=rank, layout=layout, pad_value=5.0, backend=backend
        )[0]

    def gather(*s: torch.Tensor) -> torch.Tensor:
        return ops.unshard(s[0] if len(s) == 1 else list(s), spec, backend=backend)

    for r in range(sp):
        assert torch.autograd.gradcheck(shard_of(r), (x,))
        assert torch.autograd.gradgradcheck(shard_of(r), (x,))
    shards = [rand((2, spec.shard_length, 3), torch.float64, seed=20 + r).requires_grad_() for r in range(sp)]
    assert torch.autograd.gradcheck(gather, tuple(shards))
    assert torch.autograd.gradgradcheck(gather, tuple(shards))
    cat = torch.cat([s.detach() for s in shards], 1).requires_grad_()
    assert torch.autograd.gradcheck(gather, (cat,))
    assert torch.autograd.gradgradcheck(gather, (cat,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_scatters_to_positions(backend: str) -> None:
    """Summed over ranks, the shards' gradients cover every position exactly once; padding gets none."""
    x = rand((2, 9, 4), torch.float32, seed=12).requires_grad_()
    shards, spec = all_shards(x, 4, "zigzag", 1, 0.0, backend)
    weights = [rand(tuple(s.shape), torch.float32, seed=30 + r) for r, s in enumerate(shards)]
    sum(((s * w).sum() for s, w in zip(shards, weights, strict=True)), torch.zeros(())).backward()
    want = torch.zeros_like(x)
    for r, w in enumerate(weights):
        pos = spec.positions(r)
        want[:, pos[pos < 9]] += w[:, pos < 9]
    assert_same_bits(x.grad, want)
    # the unshard backward hands each shard its slice of the gradient
    leaves = [s.detach().requires_grad_() for s in shards]
    g = rand((2, 9, 4), torch.float32, seed=13)
    (ops.unshard(leaves, spec, backend=backend) * g).sum().backward()
    for r, leaf in enumerate(leaves):
        assert_same_bits(leaf.grad, reference_pad_and_shard(g, 4, r, 1, "zigzag", 0.0))


# ----------------------------------------------------------------------------------------------------------
# Errors through the public door
# ----------------------------------------------------------------------------------------------------------


def test_public_errors() -> None:
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="layout"):
        ops.pad_and_shard(x, sp_size=2, rank=0, layout="striped")
    for rank in (-1, 2):
        with pytest.raises(ValueError, match="rank"):
            ops.pad_and_shard(x, sp_size=2, rank=rank)
    with pytest.raises(ValueError, match="sp_size"):
        ops.pad_and_shard(x, sp_size=0, rank=0)
    with pytest.raises(ValueError, match="pad_value"):
        ops.pad_and_shard(x.long(), sp_size=2, rank=0, pad_value=0.5)
    with pytest.raises(ValueError, match="pad_value"):
        ops.pad_and_shard(x > 0, sp_size=2, rank=0, pad_value=-100)
    with pytest.raises(RuntimeError, match="overflow"):
        ops.pad_and_shard(x.to(torch.uint8), sp_size=2, rank=0, pad_value=300)
    shards, spec = all_shards(x, 2, "zigzag", 1, 0, "torch")
    with pytest.raises(ValueError, match="shards"):
        ops.unshard(shards[:1], spec)
    with pytest.raises(ValueError, match="expected"):
        ops.unshard([shards[0], shards[1][:, :1]], spec)
    with pytest.raises(ValueError, match="expected"):
        ops.unshard(torch.cat(shards, 1)[:, :5], spec)
    with pytest.raises(ValueError, match="spec says"):
        ps.pad_and_shard(x[:, :4], spec, 0, 0, "torch")


# ----------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU): the "cuda" backend against the reference on CUDA tensors
# ----------------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_reference(dtype: torch.dtype, layout: str) -> None:
    for sp in SP_SIZES:
        for length in LENGTHS:
            x = rand((2, length, 5), dtype, seed=length + sp, device="cuda")
            shards, spec = all_shards(x, sp, layout, 1, PAD_FOR[dtype], "cuda")
            for r, shard in enumerate(shards):
                assert shard.is_cuda and shard.is_contiguous()
                assert_same_bits(shard, reference_pad_and_shard(x, sp, r, 1, layout, PAD_FOR[dtype]))
            assert_same_bits(ops.unshard(shards, spec, backend="cuda"), x)
            assert_same_bits(ops.unshard(torch.cat(shards, 1), spec, backend="cuda"), x)


@requires_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_layouts_strides_and_alignment(layout: str) -> None:
    base = rand((4, 37, 24), torch.bfloat16, seed=6, device="cuda")
    cases = [
        (non_contiguous(base), 1),
        (base.transpose(0, 1), 0),
        (base.transpose(1, 2), 2),
        (base.reshape(-1)[1:].reshape(-1)[: 4 * 37 * 23].view(4, 37, 23), 1),  # odd offset: 2-byte vectors
        (torch.arange(37, device="cuda").expand(3, 2, 37), 2),  # position ids, expanded
        (rand((70000, 3), torch.int64, seed=8, device="cuda"), 1),  # > 65535 units: grid.y loops
        (rand((1, 300001, 3), torch.float16, seed=9, device="cuda"), 1),  # long rows of 6 bytes
    ]
    for x, dim in cases:
        for sp in (1, 3, 4):
            shards, spec = all_shards(x, sp, layout, dim, -2, "cuda")
            for r, shard in enumerate(shards):
                assert_same_bits(shard, reference_pad_and_shard(x, sp, r, dim, layout, -2))
            assert_same_bits(ops.unshard(shards, spec, backend="cuda"), x)
            assert_same_bits(ops.unshard([non_contiguous(s) for s in shards], spec, backend="cuda"), x)


@requires_cuda
def test_cuda_outputs_fully_written() -> None:
    check_out_variants_fully_written("cuda", "cuda")


@requires_cuda
def test_cuda_gradcheck() -> None:
    x = rand((2, 7, 3), torch.float64, seed=14, device="cuda").requires_grad_()
    spec = ShardSpec.make(length=7, dim=1, sp_size=3, layout="zigzag")

    def shard_of(rank: int):
        return lambda t: ops.pad_and_shard(t, sp_size=3, rank=rank, backend="cuda")[0]

    def gather(*s: torch.Tensor) -> torch.Tensor:
        return ops.unshard(list(s), spec, backend="cuda")

    for r in range(3):
        assert torch.autograd.gradcheck(shard_of(r), (x,))
        assert torch.autograd.gradgradcheck(shard_of(r), (x,))
    shards = [
        rand((2, spec.shard_length, 3), torch.float64, seed=r, device="cuda").requires_grad_()
        for r in range(3)
    ]
    assert torch.autograd.gradcheck(gather, tuple(shards))
    assert torch.autograd.gradgradcheck(gather, tuple(shards))


# ----------------------------------------------------------------------------------------------------------
# The CUDA kernels' bodies, emulated on the CPU (needs only nvcc): same code, same grid, same vector widths.
# ----------------------------------------------------------------------------------------------------------


EMULATOR_SOURCE = r"""
// Runs pad_shard.cu's launches on the CPU: every (block_y, block_x, thread) of the grid the launcher picked.
#include "cuda/pad_shard.cu"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace longrl;

template <typename V> void body(const ThreadPos& t, const ShardArgs<V>& a) { pad_and_shard_body(t, a); }
template <typename V> void body(const ThreadPos& t, const UnshardArgs<V>& a) { unshard_body(t, a); }

struct Emulate {
  template <typename L> cudaError_t operator()(const L& l) const {
    std::printf("vec=%d grid=%u,%u block=%u\n", int(sizeof(l.args.pad)), l.grid.x, l.grid.y, l.block.x);
    for (int64_t by = 0; by < l.grid.y; ++by)
      for (int64_t bx = 0; bx < l.grid.x; ++bx)
        for (int64_t tx = 0; tx < l.block.x; ++tx)
          body(ThreadPos{tx, l.block.x, bx, l.grid.x, by, l.grid.y}, l.args);
    return cudaSuccess;
  }
};

// argv: shard|unshard|concat|scatter in_file out_file out_bytes in_offset out_offset outer row_bytes length chunk
//       sp layout a b pad_hex   (shard: a,b = rank range; unshard/concat: unused; scatter: a = rank)
int main(int argc, char** argv) {
  if (argc != 16) return 2;
  const std::string mode = argv[1];
  std::ifstream in(argv[2], std::ios::binary);
  const std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const int64_t out_bytes = std::atoll(argv[4]), in_off = std::atoll(argv[5]), out_off = std::atoll(argv[6]);
  PadShardDims d{std::atoll(argv[7]), std::atoll(argv[8]), std::atoll(argv[9]), std::atoll(argv[10]),
                 std::atoll(argv[11]), std::atoll(argv[12])};
  const int64_t a = std::atoll(argv[13]), b = std::atoll(argv[14]);
  unsigned char pad[16];
  for (int i = 0; i < 16; ++i) pad[i] = (unsigned char)std::strtol(std::string(argv[15] + 2 * i, 2).c_str(), 0, 16);
  // 16-byte aligned buffers, data placed at the requested offsets (to force narrower vectors)
  std::vector<uint4> src_buf(data.size() / 16 + 2), out_buf(out_bytes / 16 + 2);
  char* src = reinterpret_cast<char*>(src_buf.data()) + in_off;
  char* out = reinterpret_cast<char*>(out_buf.data()) + out_off;
  std::copy(data.begin(), data.end(), src);
  std::fill(out, out + out_bytes, char(0xA5));  // poison
  const int64_t per_rank = d.layout == 1 ? 2 : 1, shard_rows = d.chunk * per_rank;
  cudaError_t err;
  if (mode == "shard") {
    err = dispatch_pad_and_shard(out, src, d, a, b, pad, Emulate{});
  } else {
    std::vector<const void*> ptrs(d.sp, nullptr);
    int64_t outer_rows = shard_rows;
    for (int64_t r = 0; r < d.sp; ++r) {
      if (mode == "unshard") ptrs[r] = src + r * d.outer * shard_rows * d.row_bytes;
      if (mode == "concat") ptrs[r] = src + r * shard_rows * d.row_bytes;
    }
    if (mode == "concat") outer_rows = shard_rows * d.sp;
    if (mode == "scatter") ptrs[a] = src;
    err = dispatch_unshard(out, ptrs.data(), outer_rows, d, mode == "scatter" ? nullptr : pad, Emulate{});
  }
  if (err != cudaSuccess) return 3;
  std::ofstream(argv[3], std::ios::binary).write(out, out_bytes);
  return 0;
}
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NVCC is None:
        pytest.skip("nvcc not found")
    tmp = tmp_path_factory.mktemp("pad_shard_emulator")
    (tmp / "emulate.cu").write_text(EMULATOR_SOURCE)
    exe = tmp / "emulate"
    cmd = [NVCC, "-std=c++17", "-O1", "--expt-relaxed-constexpr", "-gencode=arch=compute_80,code=sm_80",
           "-I", str(ROOT / "csrc"), str(tmp / "emulate.cu"), "-o", str(exe)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return exe


def emulate(exe: Path, tmp: Path, mode: str, src: torch.Tensor, out_like: torch.Tensor, dim: int, spec: ShardSpec,
            a: int = 0, b: int = 0, pad: torch.Tensor | None = None, in_off: int = 0, out_off: int = 0):  # fmt: skip
    """Run one emulated launch; returns (output shaped like out_like, the launcher's printed choices)."""
    src = src.contiguous()
    outer = out_like.shape[:dim].numel()  # the same for every tensor involved
    row_bytes = out_like.shape[dim + 1 :].numel() * out_like.element_size()
    (tmp / "in.bin").write_bytes(src.reshape(-1).view(torch.uint8).numpy().tobytes())
    pad_bytes = bytes(16) if pad is None else (pad.reshape(1).view(torch.uint8).numpy().tobytes() * 16)[:16]
    nbytes = out_like.numel() * out_like.element_size()
    args = [mode, tmp / "in.bin", tmp / "out.bin", nbytes, in_off, out_off, outer, row_bytes, spec.length,
            spec.chunk_length, spec.sp_size, spec.layout_code, a, b, pad_bytes.hex()]  # fmt: skip
    result = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr)
    raw = torch.frombuffer(bytearray((tmp / "out.bin").read_bytes()), dtype=torch.uint8)
    return raw.view(out_like.dtype).reshape(out_like.shape), result.stdout


EMULATED_CASES = [
    # (shape, dtype, dim, sp, layout, in_off, expected vector bytes)
    ((2, 13, 8), torch.bfloat16, 1, 4, "zigzag", 0, 16),
    ((2, 7, 3), torch.float32, 1, 3, "zigzag", 0, 4),
    ((3, 2, 11), torch.int64, 2, 4, "zigzag", 0, 8),
    ((2, 5, 4), torch.bool, 1, 2, "contiguous", 0, 4),
    ((1, 3, 16), torch.float16, 1, 4, "zigzag", 0, 16),  # L < 2*sp
    ((2, 9, 8), torch.float16, 1, 3, "contiguous", 2, 2),  # misaligned by 2 bytes
    ((5, 6), torch.uint8, 0, 2, "zigzag", 1, 1),  # misaligned by 1 byte, dim 0
    ((2, 1, 4), torch.float64, 1, 1, "zigzag", 0, 16),  # L = 1, sp = 1
]


@pytest.mark.parametrize(("shape", "dtype", "dim", "sp", "layout", "in_off", "vec"), EMULATED_CASES)
def test_cuda_kernel_bodies_emulated(
    emulator: Path, tmp_path: Path, shape, dtype, dim, sp, layout, in_off, vec
) -> None:
    x = rand(shape, dtype, seed=sum(shape))
    pad_value = PAD_FOR[dtype]
    pad = torch.tensor(pad_value, dtype=dtype)
    spec = ShardSpec.make(length=shape[dim], dim=dim, sp_size=sp, layout=layout)
    shards = [reference_pad_and_shard(x, sp, r, dim, layout, pad_value) for r in range(sp)]
    for r in range(sp):
        got, info = emulate(
            emulator, tmp_path, "shard", x, shards[r], dim, spec, r, r + 1, pad, in_off=in_off
        )
        assert f"vec={vec} " in info, info
        assert_same_bits(got, shards[r])
    everything = torch.cat(shards, dim)
    got, _ = emulate(emulator, tmp_path, "shard", x, everything, dim, spec, 0, sp, pad, in_off=in_off)
    assert_same_bits(got, everything)
    # unshard from separate shards (laid out back to back per rank) and from the concatenated tensor
    per_rank = torch.cat([s.contiguous().reshape(-1) for s in shards])
    got, _ = emulate(emulator, tmp_path, "unshard", per_rank, x, dim, spec, in_off=in_off, out_off=in_off)
    assert_same_bits(got, x)
    got, _ = emulate(emulator, tmp_path, "concat", everything, x, dim, spec, out_off=in_off)
    assert_same_bits(got, x)
    for r in range(sp):
        want = reference_unshard(
            [s if q == r else torch.zeros_like(s) for q, s in enumerate(shards)], shape[dim], sp, dim, layout
        )
        got, _ = emulate(emulator, tmp_path, "scatter", shards[r], x, dim, spec, r)
        assert_same_bits(got, want)


def test_unshard_of_tensors_without_the_spec_dim_is_a_value_error() -> None:
    _, spec = ops.pad_and_shard(torch.zeros(2, 8, 3), sp_size=2, rank=0, dim=2)
    with pytest.raises(ValueError, match="dim 2"):
        ops.unshard(torch.zeros(2, 8), spec)
    with pytest.raises(ValueError, match="dim 2"):
        ops.unshard([torch.zeros(2, 8), torch.zeros(2, 8)], spec)
