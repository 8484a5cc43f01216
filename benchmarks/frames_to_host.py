"""How a decoded video reaches the host: the pipeline's former copy (permuted video copied into pageable memory,
then reordered by the CPU), the same reordered on the GPU first, and the pipeline's copy now (reordered on the GPU,
copied through a 32 MiB pinned buffer piece by piece; Note [Frames to the host] in reference_pipeline/src/stages.cpp).
Checks that all three give the same values and prints the median milliseconds of 5 runs of each, twice.

    python3 benchmarks/frames_to_host.py   (needs CUDA)
"""
import time

import torch

SHAPE = (1, 3, 121, 512, 768)  # [B, C, F, H, W]: the 768x512x121 video of the benchmarks
PIECE = 8 << 20  # float32 values per pinned piece (32 MiB)


def before(v):
    return (v * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4).to("cpu", torch.float32).contiguous()


def reordered_first(v):
    return v.mul(0.5).add_(0.5).clamp_(0, 1).permute(0, 2, 1, 3, 4).contiguous().to("cpu", torch.float32)


def staged(v):
    src = v.mul(0.5).add_(0.5).clamp_(0, 1).permute(0, 2, 1, 3, 4).contiguous()
    dst = torch.empty(src.shape, dtype=torch.float32)
    flat_src, flat_dst = src.view(-1), dst.view(-1)
    piece = min(flat_src.numel(), PIECE)
    buf = torch.empty(piece, dtype=torch.float32, pin_memory=True)
    for begin in range(0, flat_src.numel(), piece):
        n = min(piece, flat_src.numel() - begin)
        buf[:n].copy_(flat_src[begin:begin + n])
        flat_dst[begin:begin + n].copy_(buf[:n])
    return dst


def median_ms(f, v):
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        f(v)
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[2]


def main():
    for dtype in (torch.float32, torch.bfloat16):
        v = torch.rand(SHAPE, device="cuda", dtype=dtype) * 2 - 1
        ref = before(v)
        assert torch.equal(reordered_first(v), ref) and torch.equal(staged(v), ref)
        for f in (before, reordered_first, staged, before, reordered_first, staged):
            print(f"{str(dtype):15} {f.__name__:16} {median_ms(f, v):7.1f} ms")


if __name__ == "__main__":
    main()
