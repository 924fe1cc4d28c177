"""Speed of softmax splatting: milliseconds for forward + backward of an 8x3x64x64 batch.

    python benchmarks/splatting.py
"""

import platform
import time

import torch

from dfm.splatting import MODES, softsplat


def main(repeats: int = 20) -> None:
    g = torch.Generator().manual_seed(0)
    print(f"Command: `python benchmarks/splatting.py`; {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("\n| mode | forward + backward, ms (8x3x64x64) |\n|---|---:|")
    for mode in MODES:
        image = torch.rand(8, 3, 64, 64, generator=g, requires_grad=True)
        flow = (torch.randn(8, 2, 64, 64, generator=g) * 3).requires_grad_()
        metric = torch.randn(8, 1, 64, 64, generator=g).abs().add(0.1).requires_grad_()
        times = []
        for _ in range(repeats + 3):
            start = time.perf_counter()
            out, _ = softsplat(image, flow, metric, mode)
            out.square().mean().backward()
            times.append(time.perf_counter() - start)
        print(f"| {mode} | {1000 * sorted(times[3:])[len(times[3:]) // 2]:.1f} |")


if __name__ == "__main__":
    main()
