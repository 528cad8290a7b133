"""Train a class-conditional BigGAN with DiffAugment on a fraction of CIFAR, optionally distilling a frozen teacher
into the discriminator (VkD).

    python -m genkd.train --config configs/quickstart.yaml
    accelerate launch genkd/train.py --dataset cifar100 --data-frac 0.1
    accelerate launch genkd/train.py --resume runs/cifar10

Any key of genkd/defaults.py can be overridden as ``--section.key value``. The loop below reads top to bottom:
set-up, then per generator step ``train.d_steps`` discriminator steps and one generator step, then the bookkeeping
(EMA, logs, sample grids, evaluation, checkpoints).
"""
import math
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file (accelerate launch genkd/train.py): use this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import genkd  # noqa: F401  (first: makes torchvision importable on CPU-only torch)
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torchvision.utils import save_image
from tqdm import tqdm

from genkd.checkpoint import (
    CheckpointError, accelerator_state, checkpoint_path, load_resume_checkpoint, restore_accelerator_state, save_checkpoint,
)
from genkd.config import ConfigError, config_and_resume, save_config, wants_help
from genkd.data import DataError, load_arrays, subset_indices
from genkd.defaults import gan_config, gan_help, per_process_batch
from genkd.diffaug import diff_augment
from genkd.distill import build_distiller
from genkd.evaluation import EvaluationError, Evaluator, append_history, plot_history
from genkd.metrics.inception import InceptionWeightsError
from genkd.models.biggan import build_models
from genkd.speed import SpeedError, adam, prepare_module
from genkd.speed import resolve as resolve_speed
from genkd.regularizers import Regularizers
from genkd.sampling import sampling_mode
from genkd.preemption import GracefulStop, Preempted, stop_message
from genkd.teachers import TeacherError
from genkd.trackers import build_trackers, start_trackers


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last checkpoint on disk is from before it."""


class RealBatches:
    """Endless, reproducible stream of real batches kept on the device (CIFAR subsets are small).

    Batch ``k`` is a pure function of ``k``: the stream is the concatenation of per-epoch permutations seeded by the
    epoch, each process reads its own slice of the global batch. So resuming at step ``s`` continues the exact same
    stream without replaying a loader, and there is no loader state to checkpoint.
    """

    def __init__(self, images_uint8, labels, batch_size, seed, rank, world_size, device):
        self.images = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(labels).long().to(device)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self._epoch, self._order = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.labels), generator=generator)
        return self._order

    def __call__(self, k: int):
        """Real images in [-1, 1] with a random horizontal flip, and their labels."""
        first = (k * self.world_size + self.rank) * self.batch_size
        positions = torch.arange(first, first + self.batch_size)
        n = len(self.labels)
        epochs, offsets = positions // n, positions % n
        index = torch.empty_like(positions)
        for epoch in range(first // n, (first + self.batch_size - 1) // n + 1):  # one or two epochs per batch
            in_epoch = epochs == epoch
            index[in_epoch] = self._permutation(epoch)[offsets[in_epoch]]
        index = index.to(self.labels.device, non_blocking=True)
        images = self.images[index].float().div(127.5).sub(1.0)
        flip = torch.rand(len(index), 1, 1, 1, device=images.device) < 0.5
        return torch.where(flip, images.flip(3), images), self.labels[index]


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model over parameters and float buffers (batch-norm statistics and
    spectral-norm vectors too, as BigGAN's EMA does); a plain copy while decay is 0 (before ``train.ema_start``).

    Averaged power-iteration vectors are renormalised: in eval mode spectral norm uses them as they are, and a
    shorter-than-unit vector would underestimate the largest singular value.

    One ``torch._foreach_*`` call per kind of entry instead of a Python loop of small ops (the same arithmetic)."""
    pairs = list(zip(ema.state_dict().items(), model.state_dict().values()))
    floats = [(name, ema_value, value) for (name, ema_value), value in pairs if ema_value.dtype.is_floating_point]
    others = [(ema_value, value) for (_, ema_value), value in pairs if not ema_value.dtype.is_floating_point]
    if floats:
        torch._foreach_lerp_([ema_value for _, ema_value, _ in floats], [value for _, _, value in floats], 1.0 - decay)
    vectors = [ema_value for name, ema_value, _ in floats if name.endswith(("._u", "._v"))]
    if vectors:  # F.normalize(v, dim=0) of each: v / max(|v|, 1e-12)
        norms = torch._foreach_clamp_min(torch._foreach_norm(vectors), 1e-12)
        torch._foreach_div_(vectors, norms)
    if others:
        torch._foreach_copy_([ema_value for ema_value, _ in others], [value for _, value in others])


@torch.no_grad()
def save_sample_grid(generator, noise, labels, path: Path, columns: int, mode: str, batch_size: int) -> None:
    """Fixed noise, one row per class, so grids of one run are comparable across steps; drawn in ``eval.sample_mode``
    (the reference's sample sheets, like its evaluation, use G_ema in train mode) in batches of
    ``eval.sample_batch_size``."""
    with sampling_mode(generator, mode):
        images = torch.cat([generator(z, y) for z, y in zip(noise.split(batch_size), labels.split(batch_size))])
    save_image(images.float(), path, nrow=columns, normalize=True, value_range=(-1, 1))


def main(argv=None):
    if wants_help(sys.argv[1:] if argv is None else argv):
        return print(gan_help())
    with GracefulStop() as stop:  # SIGTERM / SIGINT / SIGUSR1: finish the step, checkpoint, exit 75
        run_training(argv, stop)


def run_training(argv, stop: GracefulStop) -> None:
    cfg, resume = config_and_resume(sys.argv[1:] if argv is None else argv, gan_config)
    run_dir = Path(cfg.run_dir)
    if resume is None and checkpoint_path(run_dir).is_file():
        raise ConfigError(f"{run_dir} already holds a checkpoint: pass --resume {run_dir}, or choose another --run-dir")
    trackers = build_trackers(cfg.train.trackers, run_dir)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=trackers, project_dir=str(run_dir))
    cfg.train.batch_size = per_process_batch(cfg.train, accelerator.num_processes)
    set_seed(cfg.seed, device_specific=True)
    device, rank, world_size = accelerator.device, accelerator.process_index, accelerator.num_processes

    # ---- data: the run's subset of the training split, chosen once and saved in the run directory
    images, labels, num_classes = load_arrays(cfg.data, "train")
    with accelerator.main_process_first():
        chosen = subset_indices(cfg.data, labels, run_dir)
    real_batches = RealBatches(images[chosen], labels[chosen], cfg.train.batch_size, cfg.seed, rank, world_size, device)

    # ---- models, EMA generator, optional distiller (its projector trains with the discriminator)
    generator, discriminator = build_models(cfg.model, num_classes)
    if cfg.train.sync_batchnorm and world_size > 1:
        generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)
    generator_ema, _ = build_models(cfg.model, num_classes)
    generator_ema.load_state_dict(generator.state_dict())
    generator_ema.to(device).eval().requires_grad_(False)
    distiller = build_distiller(cfg.distill, discriminator.feature_dim, num_classes)
    speed = resolve_speed(cfg.speed, device)  # genkd/speed.py: compiled, channels_last G and D, fused Adam
    for module in (generator, discriminator, *([distiller.teacher.encoder] if distiller else [])):
        prepare_module(module, speed)
    d_parameters = list(discriminator.parameters()) + (list(distiller.parameters()) if distiller else [])
    optimizer_g = adam(generator.parameters(), cfg.train.g_lr, cfg.train.betas, speed)
    optimizer_d = adam(d_parameters, cfg.train.d_lr, cfg.train.betas, speed)
    regularizers = Regularizers(cfg.reg, reduce_mean=lambda tensor: accelerator.reduce(tensor, "mean"))

    evaluator = Evaluator(cfg, accelerator) if cfg.eval.every else None  # checks the Inception weights now
    step, best_fid = 0, math.inf
    if resume is not None:
        state = load_resume_checkpoint(run_dir)  # last.pt, or an older one if it is unreadable
        generator.load_state_dict(state["G"])
        discriminator.load_state_dict(state["D"])
        generator_ema.load_state_dict(state["G_ema"])
        optimizer_g.load_state_dict(state["opt_G"])
        optimizer_d.load_state_dict(state["opt_D"])
        for optimizer, lr in ((optimizer_g, cfg.train.g_lr), (optimizer_d, cfg.train.d_lr)):
            for group in optimizer.param_groups:  # the config wins over the saved hyper-parameters
                group.update(lr=lr, betas=tuple(cfg.train.betas))
        if distiller:
            distiller.projector.load_state_dict(state["projector"])
        regularizers.load_state_dict(state.get("regularizers", {}))  # runs saved before regularisers existed: {}
        step, best_fid = state["step"], state["best_fid"]
    generator, discriminator, optimizer_g, optimizer_d = accelerator.prepare(
        generator, discriminator, optimizer_g, optimizer_d
    )
    if distiller:
        distiller.to(device)
        if any(p.requires_grad for p in distiller.parameters()):
            distiller.projector = accelerator.prepare(distiller.projector)
    if resume is not None:  # after prepare, which may move things and draw random numbers
        restore_accelerator_state(state, accelerator)  # fp16 GradScaler, random states of every process

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "samples").mkdir(exist_ok=True)
    start_trackers(accelerator, cfg, run_dir)
    columns = 10
    sample_settings = (cfg.eval.sample_mode, cfg.eval.sample_batch_size)
    grid_generator = torch.Generator().manual_seed(cfg.seed)
    grid_noise = torch.randn(num_classes * columns, cfg.model.z_dim, generator=grid_generator).to(device)
    grid_labels = torch.arange(num_classes).repeat_interleave(columns).to(device)
    unwrapped_d = accelerator.unwrap_model(discriminator)

    def checkpoint(name: str) -> None:
        saved_with = accelerator_state(accelerator)  # a collective: every process takes part
        if accelerator.is_main_process:
            save_checkpoint(
                {
                    "step": step,
                    "best_fid": best_fid,
                    "num_classes": num_classes,
                    "config": cfg.to_dict(),
                    "G": accelerator.unwrap_model(generator).state_dict(),
                    "D": unwrapped_d.state_dict(),
                    "G_ema": generator_ema.state_dict(),
                    "opt_G": optimizer_g.state_dict(),
                    "opt_D": optimizer_d.state_dict(),
                    "projector": accelerator.unwrap_model(distiller.projector).state_dict() if distiller else None,
                    "regularizers": regularizers.state_dict(),
                    **saved_with,
                },
                checkpoint_path(run_dir, name),
                keep=cfg.train.keep_checkpoints if name == "last" else 1,
                step=step,
            )

    def stop_if_diverged(nonfinite: torch.Tensor) -> None:
        if accelerator.reduce(nonfinite, "sum").item() > 0:
            raise NonFiniteLossError(
                f"a loss became NaN or infinite before step {step}; {checkpoint_path(run_dir)} holds the last good "
                "state: lower train.d_lr / train.g_lr or use train.mixed_precision no, then --resume"
            )

    nonfinite = torch.zeros((), device=device)
    batch = cfg.train.batch_size
    progress = tqdm(total=cfg.train.steps, initial=step, disable=not accelerator.is_local_main_process, desc="G steps")
    while step < cfg.train.steps:
        # ---- discriminator: hinge loss on augmented real and fake images (+ distillation on the same images,
        #      + the configured regularisers, with the extra images they score in the same call)
        discriminator.train()
        for d_step in range(cfg.train.d_steps):
            real, real_labels = real_batches(step * cfg.train.d_steps + d_step)
            with torch.no_grad(), accelerator.autocast():
                fake_labels = torch.randint(num_classes, (batch,), device=device)
                fake = generator(torch.randn(batch, cfg.model.z_dim, device=device), fake_labels)
            augmented = diff_augment(torch.cat([real, fake.float()]), cfg.train.diffaug)
            views, view_labels = regularizers.extra_views(real, augmented[:batch], real_labels)
            with accelerator.autocast():
                d_input, d_labels = torch.cat([augmented, views]), torch.cat([real_labels, fake_labels, view_labels])
                logits, features = discriminator(d_input, d_labels, return_features=True)
                loss_d_real = F.relu(1.0 - logits[:batch]).mean()
                loss_d_fake = F.relu(1.0 + logits[batch : 2 * batch]).mean()
                loss_reg, reg_terms = regularizers(logits.float(), batch, step)
                loss_d = loss_d_real + loss_d_fake + loss_reg
                if distiller and (step * cfg.train.d_steps + d_step) % cfg.distill.every == 0:
                    loss_distill = distiller(features[: 2 * batch].float(), augmented, num_real=batch)
                    loss_d = loss_d + distiller.weight * loss_distill
            optimizer_d.zero_grad(set_to_none=True)
            accelerator.backward(loss_d)
            optimizer_d.step()
            nonfinite += (~torch.isfinite(loss_d.detach())).float()

        # ---- generator: plain adversarial loss through the (frozen for this step) discriminator
        unwrapped_d.requires_grad_(False)
        with accelerator.autocast():
            fake_labels = torch.randint(num_classes, (batch,), device=device)
            fake = generator(torch.randn(batch, cfg.model.z_dim, device=device), fake_labels)
            loss_g = -unwrapped_d(diff_augment(fake.float(), cfg.train.diffaug), fake_labels).mean()
        optimizer_g.zero_grad(set_to_none=True)
        accelerator.backward(loss_g)
        optimizer_g.step()
        unwrapped_d.requires_grad_(True)
        nonfinite += (~torch.isfinite(loss_g.detach())).float()

        step += 1
        update_ema(generator_ema, accelerator.unwrap_model(generator), cfg.train.ema_decay if step > cfg.train.ema_start else 0.0)
        progress.update(1)

        # ---- bookkeeping
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            stop_if_diverged(nonfinite)
            logs = {"loss/d_real": loss_d_real.item(), "loss/d_fake": loss_d_fake.item(), "loss/g": loss_g.item()}
            if distiller:
                logs["loss/distill"] = loss_distill.item()
            logs.update({f"loss/{name}": term.item() for name, term in reg_terms.items()})  # unweighted, as distill
            accelerator.log(logs, step=step)
            progress.set_postfix({key.split("/")[1]: f"{value:.3f}" for key, value in logs.items()})
        if accelerator.is_main_process and (step % cfg.train.sample_every == 0 or step == cfg.train.steps):
            grid_path = run_dir / "samples" / f"{step:07d}.png"
            save_sample_grid(generator_ema, grid_noise, grid_labels, grid_path, columns, *sample_settings)
        if evaluator and (step % cfg.eval.every == 0 or step == cfg.train.steps):
            stop_if_diverged(nonfinite)
            metrics = evaluator(generator_ema, num_classes)  # its own seeded noise: the training stream is untouched
            accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=step)
            accelerator.print(f"step {step}: " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
            if accelerator.is_main_process:
                append_history(run_dir, step, metrics)
            if metrics["fid"] < best_fid:
                best_fid = metrics["fid"]
                checkpoint("best")
        saved = step % cfg.train.ckpt_every == 0 or step == cfg.train.steps
        if saved:
            stop_if_diverged(nonfinite)
            checkpoint("last")
        if step < cfg.train.steps and stop.should_stop(accelerator):  # every process asks after the same step
            if not saved:
                stop_if_diverged(nonfinite)
                checkpoint("last")
            progress.close()
            accelerator.wait_for_everyone()
            accelerator.end_training()
            where = f"after generator step {step}"
            message = stop_message(stop.signal_name, where, checkpoint_path(run_dir), run_dir, "genkd.train", world_size)
            accelerator.print(message)
            raise Preempted(message)
    progress.close()
    if evaluator and accelerator.is_main_process:
        plot_history(run_dir)
    accelerator.wait_for_everyone()  # tear down together: an early destroy_process_group can hang a peer
    accelerator.end_training()
    accelerator.print(f"done: {step} generator steps; checkpoint {checkpoint_path(run_dir)}, samples in {run_dir / 'samples'}")


ERRORS = (
    ConfigError, DataError, CheckpointError, TeacherError, EvaluationError, InceptionWeightsError, NonFiniteLossError,
    SpeedError,
)  # one line each; the `genkd` command catches these too

if __name__ == "__main__":
    try:
        main()
    except ERRORS as error:
        sys.exit(f"error: {error}")
