"""The GAN track's one defaults table: every key a config file or ``--section.key`` may set, with its default.

The defaults are the paper protocol (DiffAugment BigGAN-CIFAR, as used by KD-DLGAN and VkD) on CIFAR-10 at 100 %.
"""
from genkd.config import Config, ConfigError, help_text, load_config, source_comments

DEFAULTS = {
    "run_dir": "",  # "" = runs/<dataset>-<frac>[-kd-<norm>]
    "seed": 0,
    "data": {
        "dataset": "cifar10",  # cifar10 | cifar100 (torchvision) | cifar10-sample (in the package) | npz (a file) | folder
        "root": "data",  # torchvision root, .npz path or image folder (one sub-folder per class)
        "download": True,  # torchvision datasets only; off = fail fast with a clear error when files are missing
        "frac": 1.0,  # fraction of the training set, in (0, 1]
        "balanced": False,  # same share of every class instead of a plain random subset
        "subset_seed": 0,  # seed of the subset draw (the reference protocol uses 0)
        # reference = np.random.seed(subset_seed); np.random.choice(50000, n, replace=False) in the official order, as
        # data-efficient-gans datasets.py; permutation = genkd's earlier default_rng permutation (genkd/data.py)
        "subset": "reference",
        "num_workers": 2,
    },
    "model": {
        "g_width": 64,  # generator channel multiplier
        "d_width": 64,  # discriminator channel multiplier
        "z_dim": 128,
        # 0 = per-layer class embeddings in every conditional batch norm (the reference scripts leave G_shared off);
        # > 0 = one shared class embedding of this size, mapped by SN linears to each layer's gains and biases
        "shared_dim": 0,
        "g_blocks": 3,  # up-sampling residual blocks: 4 -> 32 pixels
        "d_blocks": 4,  # down-sampling residual blocks (the last ones keep the resolution at 32x32 inputs)
    },
    "train": {
        "steps": 0,  # generator steps; 0 = the paper's count for this dataset and fraction (see protocol_steps)
        "batch_size": 50,  # per process
        "d_steps": 4,  # discriminator steps per generator step
        "g_lr": 2e-4,
        "d_lr": 2e-4,
        "betas": [0.0, 0.999],
        "ema_decay": 0.9999,
        "ema_start": 1000,  # generator step at which the EMA copy starts averaging (a plain copy before)
        "diffaug": "translation,cutout",  # comma-separated subset of color, translation, cutout; "" = none
        "mixed_precision": "no",  # no | fp16 | bf16 (accelerate)
        "log_every": 100,
        "sample_every": 1000,
        "ckpt_every": 5000,
        "global_batch_size": 0,  # 0 = train.batch_size per process; N > 0 = N images over all processes (must divide)
        "sync_batchnorm": False,  # G's batch norms share batch statistics across processes (torch SyncBatchNorm)
        "trackers": "tensorboard",  # comma list of accelerate trackers (tensorboard, wandb, mlflow, aim, ...); "" = none
        "keep_checkpoints": 2,  # last.pt and the previous good ones (last.1.pt ...) to fall back on if it is damaged
    },
    "distill": {
        "enabled": False,  # off = the plain DiffAugment baseline
        # vkd | kd-dlgan | clip-kd | fitnets | spkd | pkt | label: one row of genkd.distill.RECIPES each; only vkd
        # reads head / norm / target_scale / pairing / loss / preprocess below, the other rows fix them
        "method": "vkd",
        "teacher": "ViT-B-32",  # open_clip model name, model-config JSON file, or tiny-vit (genkd/teacher_configs)
        "pretrained": "openai",  # open_clip pretrained tag (downloads when online); also sets mean/std, QuickGELU
        "weights": None,  # local weights file (e.g. the tag's open_clip_pytorch_model.bin); wins over the download
        "random_teacher": False,  # random weights, for tests and offline smoke runs only
        "preprocess": "clip",  # clip | kd-dlgan (nearest x7 of the [-1, 1] images, no mean/std: KD-DLGAN's input)
        "dtype": "fp32",  # fp32 | bf16 | fp16: teacher weights cast once (LayerNorm stays fp32); KD-DLGAN ran fp16;
        # bf16 = 2.6x faster on CPUs with AVX512-BF16 and on GPUs, features within cosine 0.999 (tests/test_teachers.py)
        "teacher_resolution": 0,  # 0 = the encoder's own input size; else a smaller one (changes features: a knob)
        "every": 1,  # distil on 1 of every k discriminator steps (k > 1 changes the training: a knob)
        "head": "orthogonal",  # identity | linear | orthogonal | mlp (KD-DLGAN's SN linear 256 -> 1024 -> 512)
        "orthogonal_map": "cayley",  # cayley | matrix_exp: both exactly orthogonal; cayley ~15x cheaper (bench/)
        "norm": "whitening",  # none | layernorm | whitening (teacher features, across the batch)
        "target_scale": "unit",  # unit (whitened rows orthonormal, the paper) | layernorm (rows of norm sqrt(width))
        "pairing": "own",  # own (each image vs its own target) | aggregated (KD-DLGAN: real and fake vs both halves)
        "loss": "mse",  # mse | smooth_l1 (element-wise means, as in torch) | l2 (KD-DLGAN: mean non-squared distance)
        "weight": None,  # lambda; None = the method's own (vkd 1, kd-dlgan / clip-kd 10, fitnets 100, ...)
    },
    "speed": {  # genkd/speed.py; "auto" = the fastest setting for the device that keeps the numbers (bench_step.py)
        "compile": "auto",  # auto | on | off: torch.compile of G and D (eager fallback, with a warning, on failure)
        "channels_last": "auto",  # auto | on | off: NHWC conv weights
        "fused_adam": "auto",  # auto | on | off: one fused Adam kernel instead of a loop over parameters
        "compile_mode": "default",  # default | reduce-overhead (CUDA graphs, GPU only) | max-autotune
    },
    "eval": {
        "every": 0,  # generator steps between evaluations during training; 0 = never
        "num_samples": 10000,
        "batch_size": 500,
        "split": "test",  # reference statistics from this split of the training dataset
        "inception_weights": None,  # local Inception-v3 (torch-fidelity inception-v3-compat) weights file
        "prdc_k": 5,
        "reference_images": 0,  # images of the split behind the reference statistics; 0 = all of them (the protocol)
        "seed": 0,  # latent codes and labels of the evaluation samples: same seed, same samples at any process count
        # train = batch norm of G_ema uses each sampling batch's statistics (the reference's G_eval_mode off; its
        # running statistics are left untouched); eval = its running statistics (genkd/sampling.py)
        "sample_mode": "train",
        # images per generator call when sampling; in train mode also the batch-norm statistics' batch: the
        # reference's --batch_size 50 (with --parallel, DataParallel splits it over the GPUs: 25 each on its 2)
        "sample_batch_size": 50,
        "cache_dir": None,  # reference statistics cache; None = $XDG_CACHE_HOME/genkd or ~/.cache/genkd
        "kid_subsets": 100,  # KID: random subsets averaged (torch-fidelity's kid_subsets)
        "kid_subset_size": 1000,  # KID: images per subset, capped at the smaller set (torch-fidelity's kid_subset_size)
        "fd_extractors": "",  # comma list of torch-fidelity extractors for more FDs, e.g. clip-vit-b-32,dinov2-vit-b-14
        "fd_weights": "",  # comma list of extractor=path for those (offline); unnamed ones download when online
    },
    "reg": {  # discriminator regularisers (genkd/regularizers.py, sources there); a term is on when its weight is > 0
        "lecam_weight": 0.0,  # LeCam lambda (lecam-gan's and KD-DLGAN's lc-DiffAugment scripts: 0.3)
        "lecam_decay": 0.9,  # EMA decay of the batch means of D's real and fake logits (lecam-gan utils.ema_losses)
        "lecam_start": 1000,  # generator step where the EMA starts averaging (a plain copy before); the term after it
        "cr_weight": 0.0,  # consistency regularisation lambda (data-efficient-gans cr scripts: 10)
        # CR's second view: this policy on the DiffAugmented reals ("flip" = mirror); "" = the un-augmented reals, as
        # the DiffAugment + CR scripts at 10 % and 20 % (the 100 % ones keep this default)
        "cr_augment": "flip,translation",
    },
}

CHOICES = {
    "data.dataset": ("cifar10", "cifar100", "cifar10-sample", "npz", "folder"),
    "data.subset": ("reference", "permutation"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "distill.method": ("vkd", "kd-dlgan", "clip-kd", "fitnets", "spkd", "pkt", "label"),
    "distill.preprocess": ("clip", "kd-dlgan"),
    "distill.dtype": ("fp32", "bf16", "fp16"),
    "distill.head": ("identity", "linear", "orthogonal", "mlp"),
    "distill.orthogonal_map": ("matrix_exp", "cayley"),
    "distill.norm": ("none", "layernorm", "whitening"),
    "distill.target_scale": ("unit", "layernorm"),
    "distill.pairing": ("own", "aggregated"),
    "distill.loss": ("mse", "smooth_l1", "l2"),
    "eval.split": ("train", "test"),
    "eval.sample_mode": ("train", "eval"),
    "speed.compile": ("auto", "on", "off"),
    "speed.channels_last": ("auto", "on", "off"),
    "speed.fused_adam": ("auto", "on", "off"),
    "speed.compile_mode": ("default", "reduce-overhead", "max-autotune"),
}

CHECKS = {
    "data.frac": (lambda f: 0.0 < f <= 1.0, "a fraction in (0, 1], e.g. --data-frac 0.1"),
    "train.steps": (lambda n: n >= 0, "a number of generator steps >= 0 (0 = the paper's count)"),
    "train.batch_size": (lambda n: n >= 1, "a batch size >= 1"),
    "train.d_steps": (lambda n: n >= 1, "discriminator steps per generator step >= 1"),
    "train.keep_checkpoints": (lambda n: n >= 1, "a number of checkpoints >= 1 (2 = last.pt and one to fall back on)"),
    "train.ema_decay": (lambda d: 0.0 <= d < 1.0, "a decay in [0, 1)"),
    "train.diffaug": (
        lambda s: all(p in ("color", "translation", "cutout") for p in s.split(",") if p),
        "a comma-separated subset of color, translation, cutout",
    ),
    "model.g_blocks": (lambda n: n >= 1, "at least one up-sampling block"),
    "model.d_blocks": (lambda n: n >= 1, "at least one down-sampling block"),
    "model.shared_dim": (lambda n: n >= 0, "0 (per-layer class embeddings, the reference) or a shared embedding size"),
    "distill.weight": (
        lambda w: w is None or (isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0.0),
        "a loss weight >= 0, or null for the method's own",
    ),
    "distill.teacher_resolution": (lambda r: r >= 0, "an input size in pixels >= 0 (0 = the teacher's own)"),
    "distill.every": (lambda k: k >= 1, "distil on 1 of every k discriminator steps: k >= 1"),
    "eval.num_samples": (lambda n: n >= 1, "a number of samples >= 1"),
    "eval.batch_size": (lambda n: n >= 1, "a batch size >= 1"),
    "eval.sample_batch_size": (lambda n: n >= 1, "a batch size >= 1 (the reference samples 50 at a time)"),
    "eval.prdc_k": (lambda k: k >= 1, "a number of nearest neighbours >= 1"),
    "eval.reference_images": (lambda n: n >= 0, "a number of reference images >= 0 (0 = the whole split)"),
    "train.global_batch_size": (lambda n: n >= 0, "a batch size over all processes >= 0 (0 = train.batch_size each)"),
    "eval.kid_subsets": (lambda n: n >= 1, "a number of KID subsets >= 1"),
    "eval.kid_subset_size": (lambda n: n >= 2, "a KID subset size >= 2"),
    "reg.lecam_weight": (lambda w: w >= 0.0, "a loss weight >= 0 (0 = off)"),
    "reg.lecam_decay": (lambda d: 0.0 <= d < 1.0, "a decay in [0, 1)"),
    "reg.lecam_start": (lambda n: n >= 0, "a generator step >= 0"),
    "reg.cr_weight": (lambda w: w >= 0.0, "a loss weight >= 0 (0 = off)"),
    "reg.cr_augment": (
        lambda s: set((s or "").replace(" ", "").split(",")) <= {"", "flip", "color", "translation", "cutout"},
        'a comma-separated list of flip, color, translation, cutout; "" = the un-augmented reals',
    ),
}

ALIASES = {"data-frac": "data.frac", "dataset": "data.dataset", "data-root": "data.root", "run-dir": "run_dir"}

# Generator steps of the reference protocol by (dataset, fraction of the training set).
PROTOCOL_STEPS = {
    "cifar10": {1.0: 250_000, 0.2: 250_000, 0.1: 125_000},
    "cifar100": {1.0: 500_000, 0.2: 250_000, 0.1: 125_000},
}


def protocol_steps(dataset: str, frac: float) -> int:
    """The paper's generator steps for the nearest protocol fraction (CIFAR-10's table for other datasets)."""
    table = PROTOCOL_STEPS.get(dataset, PROTOCOL_STEPS["cifar10"])
    return table[min(table, key=lambda protocol_frac: abs(protocol_frac - frac))]


USAGE = """usage: genkd train [--config FILE] [--resume RUN_DIR] [--section.key VALUE ...]
       (also python -m genkd.train, accelerate launch [-m] genkd/train.py ...)

Train a class-conditional BigGAN with DiffAugment on a fraction of a dataset, optionally distilling a frozen teacher
into the discriminator (VkD). --resume RUN_DIR continues a run from its saved config.yaml and checkpoints/last.pt."""


def gan_help() -> str:
    """--help of the GAN trainer, generated from DEFAULTS (and its comments), CHOICES, CHECKS and ALIASES."""
    return help_text(USAGE, DEFAULTS, source_comments(__name__), CHOICES, CHECKS, ALIASES)


def gan_config(argv=(), base_files=()) -> Config:
    """The resolved GAN config: defaults, config files, command-line overrides; ``train.steps`` filled in."""
    cfg = load_config(DEFAULTS, argv, ALIASES, CHOICES, CHECKS, base_files)
    if cfg.train.steps == 0:
        cfg.train.steps = protocol_steps(cfg.data.dataset, cfg.data.frac)
    if not cfg.run_dir:
        distill = f"-kd-{cfg.distill.norm}" if cfg.distill.enabled else ""
        cfg.run_dir = f"runs/{cfg.data.dataset}-{cfg.data.frac:g}{distill}"
    return cfg


def per_process_batch(train_cfg, num_processes: int) -> int:
    """Images per process and step: ``train.global_batch_size / num_processes`` when set, else ``train.batch_size``.

    The protocol's batch of 50 is a global batch (the reference trains on one GPU): ``--train.global-batch-size 50``
    keeps it at any process count that divides it.
    """
    total = train_cfg["global_batch_size"]
    if not total:
        return train_cfg["batch_size"]
    if total % num_processes:
        raise ConfigError(
            f"train.global_batch_size {total} does not split over {num_processes} processes: use a multiple of "
            f"{num_processes}, another process count, or train.global_batch_size 0 and train.batch_size per process"
        )
    return total // num_processes
