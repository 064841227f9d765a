"""Skip the optimizer step on a non-finite gradient norm with no host sync.

gclip's Clipper defaults to the "skip" policy: when the norm is NaN or Inf it
writes no gradient and raises the non-finite flag in its device result. The
flag is a tensor on the gradients' device; the update below selects, on the
device, the gradient where the flag is 0 and zero where it is 1 (torch.where:
multiplying by 0 would turn an Inf gradient into NaN), so a bad step changes
no weight and the CPU never waits for the GPU. (On the CPU everything is synchronous anyway; the code is the same.)
The script checks what it shows: the bad step leaves every weight
bit-identical and the others change them; it exits 1 otherwise.

    python examples/python/skip_nonfinite_step.py
"""

import sys

import torch

import gclip.torch as gt


def main():
    device = "cuda" if torch.cuda.is_available() and gt._lib.cuda_device_count() > 0 else "cpu"
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1).to(device)
    clipper = gt.Clipper(max_norm=1.0)  # nonfinite="skip" is the default
    lr = 0.1
    failures = []
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
        keep = res["nonfinite"] == 0           # False on a non-finite norm
        before = [p.detach().clone() for p in model.parameters()]  # for the check below
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(torch.where(keep, p.grad, 0.0) * lr)
        # printing and checking read the values back (a sync), only for the demonstration
        skipped = bool(int(res["nonfinite"]))
        unchanged = all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
        print(f"step {step}: norm {float(res['norm']):10.4g}  "
              f"{'skipped' if skipped else 'applied'}  "
              f"weights {'unchanged' if unchanged else 'updated'}")
        if skipped != (step == 3) or unchanged != (step == 3):
            failures.append(step)
    if failures:
        print(f"FAILED at step(s) {failures}: the bad step (3) must be skipped with every weight "
              "unchanged, and every other step applied")
        return 1
    print("ok: the bad step changed no weight, the others were applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
