"""Skip the optimizer step on a non-finite gradient norm with no host sync.

gclip's Clipper defaults to the "skip" policy: when the norm is NaN or Inf it
writes no gradient and raises the non-finite flag in its device result. The
flag is a tensor on the gradients' device; the update below is multiplied by
(1 - flag), so a bad step changes no weight and the CPU never waits for the
GPU. (On the CPU everything is synchronous anyway; the code is the same.)

    python examples/python/skip_nonfinite_step.py
"""

import torch

import gclip.torch as gt


def main():
    device = "cuda" if torch.cuda.is_available() and gt._lib.cuda_device_count() > 0 else "cpu"
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1).to(device)
    clipper = gt.Clipper(max_norm=1.0)  # nonfinite="skip" is the default
    lr = 0.1
    for step in range(6):
        x = torch.randn(16, 8, device=device)
        y = torch.randn(16, 1, device=device)
        if step == 3:
            x[0, 0] = float("inf")  # a bad batch: the gradients become non-finite
        for p in model.parameters():
            p.grad = None
        torch.nn.functional.mse_loss(model(x), y).backward()
        clipper.clip_grad_norm(model.parameters())
        res = clipper.device_result()          # views of the result slot, no sync
        keep = 1.0 - res["nonfinite"].float()  # 0 on a non-finite norm
        with torch.no_grad():
            for p in model.parameters():
                g = torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
                p.sub_(g * (lr * keep))
        # printing reads the values back (a sync), only for the demonstration
        print(f"step {step}: norm {float(res['norm']):10.4g}  "
              f"{'skipped' if int(res['nonfinite']) else 'applied'}  "
              f"weights finite: {all(bool(torch.isfinite(p).all()) for p in model.parameters())}")


if __name__ == "__main__":
    main()
