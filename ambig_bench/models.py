"""Networks, registered by name with their training recipe. Every strategy trains the same network; only the
output width differs. A new model is one `@register_model(name, Recipe(...))` entry: its factory, what it takes
and its recipe beside it (as timm registers a model with its default config). Run options override the recipe.

$ ambig-bench run --model small-cnn --width 32      # any size from 8x8 grey to 32x32 RGB
$ ambig-bench run --dataset cifar10 --model fast-cifar --device cuda
$ ambig-bench run --model resnet18 --pretrained --dataset folder --labels photos/labels.csv --freeze
$ ambig-bench models                               # every model, its input size and recipe
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from ambig_bench.config import IMAGENET, ModelOptions, parse_normalize
from ambig_bench.errors import UserError
from ambig_bench.registry import Registry
from ambig_bench.weights import Start, is_run, pretrained_start, read_start

ModelFactory = Callable[[int, int, int, int], nn.Module]  # (in_channels, image_size, num_outputs, width)


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter a model trains with, each with its reason, in one place (as airbench keeps its `hyp`).

    The fields named like a run option (`--lr`, `--translate`, ...; `Recipe.option_defaults`) are that option's
    default for this model; the others are fixed parts of the recipe that no option changes.
    """

    width: int | None  # channels of the first stage: the network's size (--width); None: the architecture's own
    optimizer: str  # adamw | sgd with Nesterov momentum (--optimizer)
    batch_size: int  # images per step (--batch-size)
    lr: float  # peak learning rate (--lr), reached and left as `schedule` says
    weight_decay: float  # decoupled for AdamW; under SGD divided by each layer's lr multiplier (--weight-decay)
    momentum: float  # SGD's Nesterov momentum; AdamW ignores it (--momentum)
    schedule: str  # the learning rate's shape over training: linear | triangle | cosine (--schedule)
    lookahead: str  # on | off: average the weights late in training, airbench-style (--lookahead)
    crop_scale: float  # < 1: random-resized crops keeping at least this share of the area; 1: shifts (--crop-scale)
    backbone_lr: float  # learning rate of the layers that start from given weights, as a share of lr (--backbone-lr)
    # auto: augment RGB images of 24x24 and larger, i.e. photos, where shifts and mirror images are still the same
    # class; not digits or glyphs, whose orientation can be the class (--augment; settled by train.use_augmentation
    # once the images are known).
    augment: str = "auto"
    translate: int = 2  # largest random shift in pixels, edges mirrored: airbench's 2 at 32x32 (--translate)
    # Predict over the views training augmented with (the mirror image; one-pixel shifts when training shifted), as
    # airbench's test-time augmentation does: the network was taught they are the same image.
    test_views: bool = True
    warmup_epochs: int = 1  # linear and cosine rise from 0 to the peak over the first epoch: early steps stay small
    # triangle (airbench94): from 0.2 of the peak, up to the peak at 23% of training, then down by 0.93 of the peak
    # to 0.07 at the end; short runs start fast and end on a small step.
    triangle_start: float = 0.2
    triangle_peak_at: float = 0.23
    triangle_drop: float = 0.93
    # lookahead (airbench94): from 30% of training on, every 5 steps the weights move to a slow average of
    # themselves, whose memory (0.95 per step) grows as progress**3, so the end of training averages most.
    lookahead_start: float = 0.3
    lookahead_every: int = 5
    lookahead_decay: float = 0.95
    lookahead_power: int = 3
    # The learning-rate multiplier of BatchNorm shifts whose scale is fixed at 1 (fast-cifar's `batch_norm`), under
    # SGD: airbench's 64, so the shifts keep up with the conv weights.
    bn_lr_scale: float = 64.0

    def option_defaults(self) -> dict[str, Any]:
        """The values of the fields that run options override, by flat option name; not those that do not apply
        to the model (None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in OVERRIDABLE and getattr(self, f.name) is not None}


# Recipe fields a run option of the same name overrides: the model's (config.ModelOptions) and the training
# loop's augmentation (config.TrainOptions).
OVERRIDABLE = ("width", "optimizer", "batch_size", "lr", "weight_decay", "momentum", "schedule", "lookahead",
               "crop_scale", "backbone_lr", "augment", "translate")


@dataclass
class ModelEntry:
    """A registered network: its factory, what it takes and its recipe. Normalisation is not a property of the
    entry: it is fitted on the training images, or comes with the starting weights (`weights.Start`)."""

    factory: ModelFactory
    recipe: Recipe
    input_size: int | None = None  # the size its standard weights were trained at (None: any size)
    rgb: bool = False  # it takes 3 channels, so grey images are repeated into RGB
    widenable: bool = True  # `batched.widen` can fuse copies of it (plain conv/BN/linear layers)
    # The architecture's pretrained normalisation, (mean, std) in 0..1, for weights given as a file (torchvision's
    # weights transforms, timm's pretrained_cfg); None: an architecture without standard weights.
    pretrained_normalization: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]] | None = None
    name: str = ""  # filled in by the registry

    def __post_init__(self) -> None:
        self.__doc__ = self.factory.__doc__  # what `ambig-bench models` says of it (`Registry.describe`)


def timm_family(name: str) -> ModelEntry | None:
    """`timm:<architecture>`: any timm classifier (optional extra), registered on first use with the fine-tuning
    recipe; None for other names."""
    if not name.startswith("timm:"):
        return None
    architecture = name.removeprefix("timm:")
    try:
        import timm  # optional: pip install 'ambig-bench[timm]'
    except ImportError:
        raise UserError(f"--model {name}: needs the optional timm package: pip install 'ambig-bench[timm]'") from None
    if architecture not in timm.list_models(pretrained=False):
        raise UserError(f"--model {name}: timm has no model {architecture!r} (timm.list_models() lists them)")

    def factory(in_channels: int, image_size: int, num_outputs: int, width: int = 0) -> nn.Module:
        return timm.create_model(architecture, pretrained=False, num_classes=num_outputs)

    factory.__doc__ = f"timm {architecture}: head replaced; --pretrained for timm's default weights"
    pretrained = timm.get_pretrained_cfg(architecture)

    def normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (tuple(pretrained.mean), tuple(pretrained.std)) if pretrained else IMAGENET

    return ModelEntry(factory, fine_tune(1e-3), pretrained.input_size[-1] if pretrained else 224, rgb=True,
                      widenable=False, pretrained_normalization=normalization)


MODELS: Registry[ModelEntry] = Registry("model", timm_family)


def register_model(name: str, recipe: Recipe, input_size: int | None = None, rgb: bool = False,
                   widenable: bool = True, pretrained_normalization: Callable | None = None
                   ) -> Callable[[ModelFactory], ModelFactory]:
    """Register a network factory with its recipe and what it takes (`ModelEntry`)."""

    def add(factory: ModelFactory) -> ModelFactory:
        MODELS.register(name)(ModelEntry(factory, recipe, input_size, rgb, widenable, pretrained_normalization))
        return factory

    return add


class Preprocess(nn.Module):
    """uint8 N×C×H×W -> normalised float, with the training set's per-channel mean and std."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    @classmethod
    def fit(cls, images: torch.Tensor) -> Preprocess:
        x = images.float().transpose(0, 1).flatten(1)  # C × (N·H·W)
        return cls(x.mean(1), x.std(1).clamp_min(1.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_model("small-cnn", Recipe(
    width=32,  # a few seconds per epoch on a laptop CPU, and enough for digits and CIFAR-sized images
    optimizer="adamw",  # forgiving of the learning rate across image sizes and strategies
    batch_size=128,
    lr=3e-3,
    weight_decay=5e-4,
    momentum=0.9,  # unused by AdamW; SGD's usual value, for --optimizer sgd
    schedule="linear",  # one epoch of warm-up, then straight down to 0
    lookahead="off",
    crop_scale=1.0,  # small images: shifts, not crops
    backbone_lr=1.0,  # with --weights, every layer learns at the head's rate
))
def small_cnn(in_channels: int, image_size: int, num_outputs: int, width: int = 32) -> nn.Module:
    """Small CNN for CPU: conv-BN-ReLU-pool stages (widths w, 2w, 4w), as many as the image size allows."""
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    # Pool while the map stays at least 2x2: 8x8 digits get two stages, 28x28 and 32x32 images three.
    for stage in range(3):
        if size // 2 < 2:
            break
        layers += conv_bn(c, width * 2**stage) + [nn.MaxPool2d(2)]
        c, size = width * 2**stage, size // 2
    layers += conv_bn(c, c) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_outputs)]
    return nn.Sequential(*layers)


# airbench94's recipe, for a mean loss over the batch.
FAST_CIFAR = Recipe(
    width=64,  # airbench94's block widths 64/256/256
    optimizer="sgd",
    batch_size=1024,
    lr=1.5,  # airbench's 11.5 per 1024 images for a summed loss, for the mean loss
    weight_decay=1.33e-3,  # airbench's 0.0153 per 1024 images, for the mean loss
    momentum=0.85,
    schedule="triangle",
    lookahead="on",
    crop_scale=1.0,  # 32x32 images: shifts of 2 pixels, not crops
    backbone_lr=1.0,  # with --weights, every layer learns at the head's rate
)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """airbench's BatchNorm: the scale stays 1 (only the shift learns, 64× faster under SGD), fast statistics."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    bn.lr_scale = FAST_CIFAR.bn_lr_scale  # read by train.make_optimizer
    return bn


def identity_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 conv whose first c_in filters start as the identity: an implicit residual path at initialisation."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])
    return conv


def gelu_block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        identity_conv(c_in, c_out), nn.MaxPool2d(2), batch_norm(c_out), nn.GELU(),
        identity_conv(c_out, c_out), batch_norm(c_out), nn.GELU(),
    )


class Whiten(nn.Conv2d):
    """Fixed 2x2 patch-whitening stem (airbench): filters are the training patches' principal directions,
    scaled to unit variance, each with its negative so the GELU after it loses nothing. Only the bias learns.
    `fit` sets the filters from (normalised) training images; they are saved with the model like any weight."""

    def __init__(self, in_channels: int, kernel: int = 2) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel**2, kernel, bias=True)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        c, k = self.in_channels, self.kernel_size[0]
        patches = images.double().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).flip(0).reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))


class Scale(nn.Module):
    """Multiply by a constant: keeps the initial logits of the max-pooled head small (as airbench does)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@register_model("fast-cifar", FAST_CIFAR)
def fast_cifar(in_channels: int, image_size: int, num_outputs: int, width: int = 64) -> nn.Module:
    """airbench94's net for 32x32: whitening stem, GELU blocks 64/256/256, max-pool head, SGD + lookahead."""
    w = (width, 4 * width, 4 * width)
    stem = Whiten(in_channels)
    return nn.Sequential(
        stem, nn.GELU(),
        gelu_block(stem.out_channels, w[0]), gelu_block(w[0], w[1]), gelu_block(w[1], w[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[2], num_outputs, bias=False), Scale(1 / 9),
    )


# -- torchvision backbones -------------------------------------------------------------------------------------
def fine_tune(lr: float) -> Recipe:
    """The usual transfer-learning recipe, with the family's peak learning rate (of the new head)."""
    return Recipe(
        width=None,  # the architecture's own size: --width does not apply
        optimizer="adamw",
        batch_size=64,  # 224x224 photos: a batch that fits next to a ResNet-50 in a few GB
        lr=lr,
        weight_decay=0.05,
        momentum=0.9,  # unused by AdamW
        schedule="cosine",  # one epoch of warm-up, then cosine decay
        lookahead="off",
        # Random-resized crops keeping at least 35% of the area, and flips: milder than ImageNet training's 8%,
        # because a few thousand photos leave little to spare.
        crop_scale=0.35,
        backbone_lr=0.1,  # the pretrained layers move at a tenth of the new head's rate
    )


BACKBONES = {  # torchvision architecture -> its family's peak learning rate (of the head)
    "resnet18": 1e-3, "resnet50": 1e-3, "mobilenet_v3_small": 2e-3, "mobilenet_v3_large": 2e-3,
    "efficientnet_b0": 1e-3, "convnext_tiny": 5e-4,
}


def head_name(net: nn.Module) -> str:
    """The classifier head: the network's last linear layer (`fc` of a ResNet, `classifier.3` of a MobileNet)."""
    names = [name for name, layer in net.named_modules() if isinstance(layer, nn.Linear)]
    if not names:
        raise TypeError(f"{type(net).__name__} has no linear classifier head")
    return names[-1]


def torchvision_backbone(architecture: str) -> ModelFactory:
    def factory(in_channels: int, image_size: int, num_outputs: int, width: int = 0) -> nn.Module:
        from torchvision.models import get_model  # importing torchvision takes a second; only its models pay

        net = get_model(architecture, weights=None)
        head = head_name(net)
        net.set_submodule(head, nn.Linear(net.get_submodule(head).in_features, num_outputs))
        return net

    factory.__doc__ = (f"torchvision {architecture}: ImageNet architecture, head replaced; --pretrained for its "
                       "ImageNet weights")
    return factory


def torchvision_normalization(architecture: str) -> Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]:
    def normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
        from torchvision.models import get_model_weights

        transform = get_model_weights(architecture).DEFAULT.transforms()  # ImageNet's, for every classifier
        return tuple(transform.mean), tuple(transform.std)

    return normalization


for _arch, _lr in BACKBONES.items():
    register_model(_arch, fine_tune(_lr), input_size=224, rgb=True, widenable=False,
                   pretrained_normalization=torchvision_normalization(_arch))(torchvision_backbone(_arch))


def load_start(net: nn.Module, start: Start, name: str) -> None:
    """Copy the starting weights into `net`, all but its head (which stays freshly initialised). Every other
    tensor must be there with its shape: otherwise a one-line UserError naming the first key at fault."""
    head = head_name(net) + "."
    where = start.origin.get("path", start.origin.get("weights", "weights"))
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith(head)}
    for key, tensor in expected.items():
        found = start.state.get(key)
        if found is None:
            raise UserError(f"{where}: does not fit {name}: key {key} is missing (expected "
                            f"{tuple(tensor.shape)})")
        if found.shape != tensor.shape:
            raise UserError(f"{where}: does not fit {name}: key {key} has shape {tuple(found.shape)}, {name} "
                            f"needs {tuple(tensor.shape)}")
    extra = next((k for k in start.state if k not in expected and not k.startswith(head)), None)
    if extra is not None:
        raise UserError(f"{where}: does not fit {name}: unexpected key {extra}")
    net.load_state_dict({k: start.state[k].to(v.dtype) for k, v in expected.items()}, strict=False)


def starting_weights(options: ModelOptions) -> Start | None:
    """The weights a run starts from (--pretrained or --weights), or None to train from scratch."""
    if options.weights:
        return read_start(options.weights)
    if not options.pretrained:
        return None
    if MODELS.get(options.name).input_size is None:
        raise UserError(f"--pretrained: {options.name} has no standard pretrained weights; use a torchvision model "
                        f"(ambig-bench models) or --weights FILE|RUN_DIR")
    return pretrained_start(options.name)


def settled_normalize(options: ModelOptions) -> str | None:
    """`--normalize` as the run uses it: as given; unset for a weights file (not a run) of an architecture with a
    pretrained normalisation, that normalisation (`imagenet`, or its MEAN,STD); else None (the starting weights'
    own, or the data's)."""
    if options.normalize is not None:
        return options.normalize
    entry = MODELS.get(options.name)
    if not options.weights or is_run(options.weights) or entry.pretrained_normalization is None:
        return None
    mean, std = entry.pretrained_normalization()
    if (mean, std) == IMAGENET:
        return "imagenet"
    return ",".join(f"{v:g}" for v in (*mean, *std))


def normalization_source(options: ModelOptions, start: Start | None) -> str:
    """Where a run's input normalisation comes from: `data` (fitted on its training images), `starting weights`
    (--pretrained's, a run's), or the settled --normalize (`imagenet`, MEAN,STD)."""
    settled = settled_normalize(options)
    return settled if settled is not None else own_normalization(start)


def own_normalization(start: Start | None) -> str:
    """Where a run's normalisation comes from without --normalize: its starting weights' own where they have one
    (--pretrained's, a run's), else its data's."""
    return "starting weights" if start is not None and start.mean is not None else "data"


def preprocess_for(normalization: str, train_images: torch.Tensor, start: Start | None, in_channels: int
                   ) -> Preprocess:
    """The Preprocess a `normalization_source` gives, for a network taking `in_channels` channels (3 for an RGB
    network: one grey channel's values broadcast to all three)."""
    if normalization == "starting weights":
        preprocess = Preprocess(start.mean.float(), start.std.float())
    elif (given := parse_normalize(normalization)) is None:
        preprocess = Preprocess.fit(train_images)
    else:
        preprocess = Preprocess(torch.tensor(given[0]) * 255, torch.tensor(given[1]) * 255)
    channels = preprocess.mean.numel()
    if channels == 1 and in_channels == 3:
        return Preprocess(preprocess.mean.flatten().repeat(3), preprocess.std.flatten().repeat(3))
    if channels != in_channels:
        raise UserError(f"input normalisation {normalization!r} has {channels} channels, but the network takes "
                        f"{in_channels}; --normalize sets it")
    return preprocess


def build_model(name: str, in_channels: int, image_size: int, num_outputs: int, width: int) -> nn.Module:
    return MODELS.get(name).factory(in_channels, image_size, num_outputs, width)


FIT_IMAGES = 5000  # training images that data-fitted layers (whitening) look at, evenly spaced


def build_network(name: str, train_images: torch.Tensor, num_outputs: int, width: int, start: Start | None = None,
                  backbone_lr: float = 1.0, normalization: str | None = None) -> nn.Sequential:
    """Preprocess, then the network. From scratch: data-fitted layers fitted on the training images. From `start`:
    its weights (all but the head), and its layers' learning rate at `backbone_lr` times the head's (`lr_share`,
    read by train.make_optimizer). Preprocess as `normalization` says (`normalization_source`; None: the starting
    weights' own when they have one, else fitted on the uint8 training images)."""
    _, channels, size, _ = train_images.shape
    entry = MODELS.get(name)
    net = build_model(name, channels, size, num_outputs, width)
    normalization = normalization or own_normalization(start)
    # Grey images enter an RGB network as RGB: one grey channel's normalisation broadcast against 3.
    preprocess = preprocess_for(normalization, train_images, start, 3 if entry.rgb else channels)
    if start is not None:
        load_start(net, start, name)
        head = net.get_submodule(head_name(net))
        for layer in net.modules():
            if layer is not head and backbone_lr != 1.0:
                layer.lr_share = backbone_lr
        return nn.Sequential(preprocess, net)
    # Evenly spaced, not the first ones: datasets often come sorted by class.
    n, k = len(train_images), min(len(train_images), FIT_IMAGES)
    sample = preprocess(train_images[torch.arange(k) * (n - 1) // max(k - 1, 1)])
    for layer in net.modules():
        if isinstance(layer, Whiten):
            layer.fit(sample)
    return nn.Sequential(preprocess, net)
