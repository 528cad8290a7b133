"""Discriminator regularisation terms, chosen by name like the augmentations of diffaug.py: a term is on when its
``reg.<name>_weight`` is > 0, and the discriminator loss gains ``weight * term`` at every discriminator step.

    lecam  LeCam (Tseng et al., CVPR 2021, google/lecam-gan), the regulariser KD-DLGAN's train.sh runs
    cr     consistency regularisation (Zhang et al., ICLR 2020), the "+ CR" rows of the DiffAugment README

The training loop asks the terms for extra images to score (``extra_views``: CR's second view of the reals), puts
them in the same discriminator call as the augmented real and fake batch (one call, as the reference's ``G_D``, so
spectral norm runs one power iteration per step either way), and hands the logits back (``__call__``). The loop has
no per-method branches; a new term is a class here and an entry in ``REGULARIZERS``.
"""
import torch

from genkd.diffaug import diff_augment


class Regularizer:
    """A term of the discriminator loss, called as ``term(real_logits, fake_logits, view_logits, step)``; it asks for
    no extra images and has no state unless it overrides ``view`` / ``state_dict`` / ``load_state_dict``."""

    def view(self, real: torch.Tensor, augmented_real: torch.Tensor) -> torch.Tensor | None:
        """Images of the real batch's classes the discriminator should also score for this term; None = none."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LeCam(Regularizer):
    """LeCam: mean(relu(D(x) - ema_fake)^2) + mean(relu(ema_real - D(G(z)))^2), where ema_real / ema_fake are
    exponential moving averages of the batch means of D's real and fake logits.

    Every choice follows google/lecam-gan (the same code is in cuikaiwen18/KD_DLGAN):
    - the logits are those of the DiffAugmented batch, the ones the hinge loss sees (third_party/BigGAN.py ``G_D``);
    - the EMA takes the current batch means first, then the term uses it (biggan_cifar/losses.py ``loss_hinge_dis``
      updates the EMA, third_party/train_fns.py then calls ``lecam_reg``), at every discriminator step;
    - the EMA starts at 1000 and is a plain copy while the iteration is below ``start`` (third_party/utils.py
      ``ema_losses``: init 1000, decay 0.9); the term applies once the iteration is above ``start``
      (train_fns.py: ``itr > ema_losses.start_itr``), with start 1000 (biggan_cifar/train.py
      ``ema_losses(start_itr=1000)``).
      The iteration is the count of finished generator steps, genkd's ``step`` during the discriminator steps;
    - the means are taken from detached logits in float32 and averaged in float64 (the reference's ``.item()``
      Python floats); lambda 0.3 (biggan_cifar/scripts/lc-DiffAugment-biggan-cifar10-0.1.sh ``--LC 0.3``).
    Under DDP the batch means are averaged over the processes (``reduce_mean``): the reference's DataParallel sees the
    whole batch in one process, and so every process keeps the same EMA. The reference does not checkpoint the EMA
    (a resume restarts it from 1000); genkd saves it with the run, so a resumed run is identical to a straight one.
    """

    INITIAL = 1000.0  # the reference's starting value; it only matters with start 0 (a plain copy before otherwise)

    def __init__(self, decay: float, start: int, reduce_mean=None):
        self.decay, self.start = decay, start
        self.reduce_mean = reduce_mean or (lambda tensor: tensor)
        self.ema = torch.full((2,), self.INITIAL, dtype=torch.float64)  # [real, fake]

    def update(self, real_logits: torch.Tensor, fake_logits: torch.Tensor, step: int) -> None:
        means = torch.stack([real_logits.detach().float().mean(), fake_logits.detach().float().mean()])
        means = self.reduce_mean(means)
        decay = self.decay if step >= self.start else 0.0
        self.ema = self.ema.to(means.device) * decay + means.double() * (1.0 - decay)

    def __call__(self, real_logits, fake_logits, view_logits, step):
        self.update(real_logits, fake_logits, step)
        if step <= self.start:
            return real_logits.new_zeros(())
        ema_real, ema_fake = self.ema  # 0-d float64: the float32 logits keep their dtype, as with Python floats
        real, fake = real_logits.float(), fake_logits.float()
        return (real - ema_fake).relu().pow(2).mean() + (ema_real - fake).relu().pow(2).mean()

    def state_dict(self) -> dict:
        return {"ema": self.ema.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"].to(torch.float64)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(images), 1, 1, 1, device=images.device) < 0.5
    return torch.where(flip, images.flip(3), images)


class Consistency(Regularizer):
    """Consistency regularisation: mean((D(view) - D(T(x)))^2) over the real batch, gradients through both, where
    T(x) are the DiffAugmented reals the hinge loss sees and ``view`` their second view.

    As mit-han-lab/data-efficient-gans DiffAugment-biggan-cifar (BigGAN.py ``G_D.forward`` with ``CR``, train_fns.py
    ``D_loss_CR``, utils.py ``--CR_augment`` default "flip,translation"): with ``augment`` "" the view is the
    un-augmented real batch x (scripts/DiffAugment-cr-biggan-cifar10-0.1.sh and -0.2.sh: ``--CR 10 --CR_augment ""``);
    otherwise it is ``augment`` applied to T(x), "flip" a random left-right mirror (the 100 % scripts keep the
    default; without DiffAugment T(x) = x, CR-BigGAN's flip + translation). Real images only; lambda 10.
    """

    def __init__(self, augment: str | None):
        # None too: the command line reads --reg.cr_augment "" as None
        self.augment = [part.strip() for part in (augment or "").split(",") if part.strip()]

    def view(self, real, augmented_real):
        if not self.augment:
            return real
        images = augmented_real
        for part in self.augment:
            images = random_flip(images) if part == "flip" else diff_augment(images, part)
        return images

    def __call__(self, real_logits, fake_logits, view_logits, step):
        return (view_logits.float() - real_logits.float()).pow(2).mean()


REGULARIZERS = {
    "lecam": lambda reg, reduce_mean: LeCam(reg["lecam_decay"], reg["lecam_start"], reduce_mean),
    "cr": lambda reg, reduce_mean: Consistency(reg["cr_augment"]),
}


class Regularizers:
    """The configured terms (``reg.<name>_weight`` > 0) of a run, in the order of ``REGULARIZERS``.

    ``reduce_mean`` averages a tensor over the processes (``lambda t: accelerator.reduce(t, "mean")``).
    """

    def __init__(self, reg_cfg, reduce_mean=None):
        self._view_sizes = {}  # images each term added in the last extra_views, so its logits can be found
        self.terms = {
            name: (reg_cfg[f"{name}_weight"], build(reg_cfg, reduce_mean))
            for name, build in REGULARIZERS.items()
            if reg_cfg[f"{name}_weight"] > 0
        }

    def extra_views(self, real, augmented_real, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) for the discriminator to score after the augmented real and fake batch; none = empty."""
        self._view_sizes, views = {}, []
        for name, (_, term) in self.terms.items():
            view = term.view(real, augmented_real)
            if view is not None:
                self._view_sizes[name] = len(view)
                views.append(view)
        images = torch.cat(views) if views else real.new_zeros((0, *real.shape[1:]))
        return images, labels.repeat(len(views))

    def __call__(self, logits: torch.Tensor, batch: int, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of weight * term, {name: term}) from the logits of [augmented real | augmented fake | extra views]."""
        real, fake, views = logits[:batch], logits[batch : 2 * batch], logits[2 * batch :]
        total, terms, at = logits.new_zeros(()), {}, 0
        for name, (weight, term) in self.terms.items():
            size = self._view_sizes.get(name, 0)
            terms[name] = term(real, fake, views[at : at + size], step)
            total = total + weight * terms[name]
            at += size
        return total, terms

    def state_dict(self) -> dict:
        return {name: term.state_dict() for name, (_, term) in self.terms.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the terms' states; a term missing from ``state`` (a run saved without it) starts afresh."""
        for name, (_, term) in self.terms.items():
            if name in state:
                term.load_state_dict(state[name])
