"""Why Eq. 2.1 collapses, measured on one augmented batch of a trained checkpoint (docs/results.md, section 1).

    .venv/bin/python studies/collapse.py --checkpoint runs/study-digits/simclr-baseline-abc/seed-0/last.ckpt

On one batch of training images (two views each, the checkpoint's augmentation policy) through the
checkpoint's backbone and first projection head, it prints

* how often an anchor's most similar other view is its positive (the rest of the time it is a
  view of another image, usually of the same class);
* Eq. 2.1 (one head, constant temperature, beta = 0, k = 1) and NT-Xent at the same temperature
  as every projection is shrunk towards the batch mean, z -> mean + lambda (z - mean): Eq. 2.1
  falls to 0 as the views collapse while NT-Xent rises to log(2B - 1), so for Eq. 2.1 collapse is
  a descent direction from a healthy representation.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from amcl.eval.checkpoint import load_pretrained
from amcl.eval.features import evaluation_data
from amcl.losses import amcl_nt_xent_loss, nt_xent_loss, view_similarities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pretrained = load_pretrained(args.checkpoint)
    data = evaluation_data(pretrained)
    torch.manual_seed(args.seed)
    images = data.splits.train_images[torch.randperm(len(data.splits.train_labels))[:args.batch_size]]
    with torch.no_grad():
        view1, view2 = data.two_views(images)  # uint8 in, normalised views out, as in training
        z = pretrained.model.projector(pretrained.backbone(torch.cat([view1, view2])))[0]  # head 1: [2B, d]
    b = len(images)
    sim = view_similarities(z[:b], z[b:])[0]
    sim.fill_diagonal_(-float("inf"))
    nearest = sim.argmax(-1)
    positive = torch.arange(2 * b).roll(b)
    print(f"{pretrained.config.method} {'AMCL' if pretrained.config.amcl else 'baseline'}, batch of {b}, augs "
          f"{pretrained.config.augs}: the positive is the most similar view for "
          f"{(nearest == positive).float().mean():.1%} of the anchors")
    tau = f"{args.temperature:g}"
    print(f"\n| lambda | mean positive cosine | Eq. 2.1 (tau {tau}) | NT-Xent (tau {tau}) |")
    print("|---|---|---|---|")
    for lam, cosine, eq21, ntxent in shrinking(z[:b], z[b:], args.temperature):
        print(f"| {lam:g} | {cosine:.3f} | {eq21:.4f} | {ntxent:.4f} |")
    print(f"\nlog(2B - 1) = {math.log(2 * b - 1):.4f}")


def shrinking(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float,
    lambdas: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01),
) -> list[tuple[float, float, float, float]]:
    """(lambda, mean positive cosine, Eq. 2.1, NT-Xent) with every projection shrunk towards the batch mean,
    z -> mean + lambda (z - mean); Eq. 2.1 with one head, a constant temperature, beta = 0 and k = 1."""
    z = torch.cat([z1, z2])
    mean = z.mean(0, keepdim=True)
    rows = []
    for lam in lambdas:
        shrunk = mean + lam * (z - mean)
        a, b = shrunk[:len(z1)], shrunk[len(z1):]
        eq21 = float(amcl_nt_xent_loss(a, b, temperature, beta=0.0, topk=1))
        rows.append((lam, float(F.cosine_similarity(a, b).mean()), eq21, float(nt_xent_loss(a, b, temperature))))
    return rows


if __name__ == "__main__":
    main()
