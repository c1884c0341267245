"""The cost of the first training step on a GPU, with or without cudnn.benchmark (BENCHMARKS.md, GPU).

    for m in efficientnet_lite0 efficientnet_b0; do for b in 0 1; do
        PYTHONPATH=. python scripts/gpu_first_step.py $m $b; done; done

Each row needs a fresh process: the first step pays for CUDA and cuDNN start-up once per process.
The step is `train.fit`'s: batched augmentation, bf16 autocast, channels_last, fused AdamW, batch 512.
"""
import sys
import time

import torch
import torch.nn.functional as F

from pcam_core.data.transforms import augment_batch
from pcam_core.models.registry import create_model

name, bench = sys.argv[1], sys.argv[2] == "1"
torch.backends.cudnn.benchmark = bench
dev = torch.device("cuda")
t0 = time.perf_counter()
model = create_model(name).to(dev, memory_format=torch.channels_last).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
gen = torch.Generator(device=dev).manual_seed(0)
x8 = torch.randint(0, 256, (512, 96, 96, 3), dtype=torch.uint8, device=dev)
y = (torch.rand(512, device=dev) < 0.5).float()
norm = {"mean": [0.5] * 3, "std": [0.5] * 3}


def step():
    x = augment_batch(x8, norm, 96, 0.05, gen)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.binary_cross_entropy_with_logits(model(x).float().reshape(-1), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

torch.cuda.synchronize()
t1 = time.perf_counter()
step()
torch.cuda.synchronize()
t2 = time.perf_counter()
for _ in range(5):
    step()
torch.cuda.synchronize()
t3 = time.perf_counter()
for _ in range(30):
    step()
torch.cuda.synchronize()
t4 = time.perf_counter()
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
    model.eval()
    model(torch.randn(2048, 3, 96, 96, device=dev).contiguous(memory_format=torch.channels_last))
torch.cuda.synchronize()
t5 = time.perf_counter()
print(f"{name} cudnn.benchmark={bench}: setup {t1 - t0:.1f} s, first step {t2 - t1:.1f} s, "
      f"steps 2-6 {t3 - t2:.1f} s, then {30 * 512 / (t4 - t3):,.0f} img/s, "
      f"first eval batch of 2048 {t5 - t4:.1f} s", flush=True)
