"""The LD→HD generators (single source of truth; the trainer imports them).

Three architectures, chosen by the ``type`` in a model's metadata:

* ``resnet_generator``: the ResNet generator of the method (below);
* ``residual_cnn``: a small normalisation-free residual CNN (``ResidualCNN``), the bundled model's since 1.0.0;
* ``residual_unet``: a normalisation-free residual U-Net (``ResidualUNet``), two stride-2 levels: a receptive field
  of 99 px (4 bottleneck layers) for less arithmetic per pixel than the larger residual CNN (no bundled model:
  it fell behind the residual CNN in paired mode, model card "paired 9").

The ResNet generator:

c7s1-64, d128, d256, R256 × n_blocks, u128, u64, c7s1-1, tanh — reflection padding and instance norm, one channel
in and out. Upsampling defaults to nearest-neighbour resize + 3×3 convolution instead of a transposed convolution,
because transposed convolutions leave checkerboard artifacts that a radiologist would see in flat regions;
``upsample="transpose"`` gives the original layer for checkpoints that used it.

``residual=True`` (a documented deviation from the method, used by the cpu preset) adds a global skip: the network
predicts a correction that is added to its input and clamped to [−1, 1], and the last convolution starts at zero, so
an untrained generator is the identity. A few CPU-hours of training then refine the input instead of having to
rebuild the whole image and its mean HU from scratch, which is where short CycleGAN runs shift HU.

``noise_conditioning`` (every architecture, off by default): the network takes one more input channel, a map of the
input's measured noise level (``denoise/noise.py``, ``conditioning_noise_hu``), and still outputs the image's
channels (a residual network adds its correction to the image channel only). Why: a correction that must grow with
the noise is easier to learn when the network is told how noisy its input is than when it has to infer it from a
patch. The key is written into the metadata only when True, so existing models' metadata and derived UIDs stay
as they were.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from dicom_denoise_node.model import subpixel

DOWNSAMPLE_FACTOR = 4  # two stride-2 stages: tile sides must be multiples of this


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture hyper-parameters, stored in the model metadata so the node can rebuild the network."""

    in_channels: int = 1
    out_channels: int = 1
    filters: int = 64
    blocks: int = 6
    upsample: Literal["resize_conv", "transpose"] = "resize_conv"
    residual: bool = False
    noise_conditioning: bool = False

    @property
    def input_channels(self) -> int:
        """The image's channels, and one more for the noise-level map when conditioned."""
        return self.in_channels + int(self.noise_conditioning)

    def to_dict(self) -> dict[str, Any]:
        return arch_dict("resnet_generator", self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        data = dict(data)
        kind = data.pop("type", "resnet_generator")
        if kind != "resnet_generator":
            raise ValueError(f"unknown generator type {kind!r}")
        return cls(**data)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class HeadConv2d(nn.Conv2d):
    """The generator's last convolution (many channels in, one out), with a faster CPU inference path.

    oneDNN runs a convolution with a single output channel at ≈ 8 GFLOP/s on this project's CPU (12 % of the
    forward pass for 1 % of its arithmetic: a per-layer profile, docs/benchmarks.md). The same sum computed as a
    depthwise convolution (one 7×7 filter per input channel) followed by a sum over channels takes less than half
    the time. The result
    equals the dense convolution up to float32 summation order. Training and GPUs keep the dense path; the
    parameters and state-dict keys are those of ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or x.device.type != "cpu" or self.out_channels != 1 or self.groups != 1:
            return super().forward(x)
        depthwise = self.weight.reshape(self.in_channels, 1, *self.kernel_size)
        per_channel = F.conv2d(x, depthwise, None, self.stride, self.padding, self.dilation, self.in_channels)
        out = per_channel.sum(1, keepdim=True)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def _up(in_ch: int, out_ch: int, mode: str) -> list[nn.Module]:
    if mode == "transpose":
        conv: list[nn.Module] = [nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1)]
    elif mode == "resize_conv":
        conv = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3)]
    else:
        raise ValueError(f"unknown upsample mode {mode!r}")
    return [*conv, nn.InstanceNorm2d(out_ch), nn.ReLU(inplace=True)]


class ResnetGenerator(nn.Module):
    """Maps a [-1, 1] normalised CT patch of any size divisible by 4 to the other dose domain."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        f = self.config.filters
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(self.config.input_channels, f, 7),
            nn.InstanceNorm2d(f),
            nn.ReLU(inplace=True),
            nn.Conv2d(f, 2 * f, 3, stride=2, padding=1),
            nn.InstanceNorm2d(2 * f),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * f, 4 * f, 3, stride=2, padding=1),
            nn.InstanceNorm2d(4 * f),
            nn.ReLU(inplace=True),
        ]
        layers += [ResidualBlock(4 * f) for _ in range(self.config.blocks)]
        layers += _up(4 * f, 2 * f, self.config.upsample) + _up(2 * f, f, self.config.upsample)
        head = HeadConv2d(f, self.config.out_channels, 7)
        layers += [nn.ReflectionPad2d(3), head]
        self._head_index = len(layers) - 1  # an index, not an attribute: one name per tensor in the state dict
        if self.config.residual:
            if self.config.in_channels != self.config.out_channels:
                raise ValueError("a residual generator needs as many output channels as input channels")
        else:
            layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)
        self._resize_convs = {  # start index of each Upsample → ReflectionPad2d → Conv2d run (subpixel.py)
            i for i in range(len(layers) - 2) if subpixel.matches(layers[i], layers[i + 1], layers[i + 2])
        }
        self.start_as_identity()

    def start_as_identity(self) -> None:
        """Zero the last convolution of a residual generator (call again after any re-initialisation)."""
        if self.config.residual:
            head = self.model[self._head_index]
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % DOWNSAMPLE_FACTOR or x.shape[-2] % DOWNSAMPLE_FACTOR:
            raise ValueError(f"input {tuple(x.shape[-2:])} must be padded to a multiple of {DOWNSAMPLE_FACTOR}")
        y = self.model(x) if self.training else self._inference_body(x)
        if self.config.residual:
            return (image_channels(x, self.config) + y).clamp(-1.0, 1.0)
        return y

    def _inference_body(self, x: torch.Tensor) -> torch.Tensor:
        """``self.model(x)`` with each resize-convolution computed as one sub-pixel convolution (same result)."""
        layers = list(self.model)
        i = 0
        while i < len(layers):
            if i in self._resize_convs:
                x = subpixel.upsample_conv(x, layers[i + 2])
                i += 3
            else:
                x = layers[i](x)
                i += 1
        return x


@dataclass(frozen=True)
class ResidualCNNConfig:
    """A plain residual CNN: ``layers`` 3×3 convolutions (ReLU between), full resolution, no normalisation.

    ``dilations`` (one per layer) widens the receptive field without downsampling: CT noise after FBP is
    correlated over a few pixels, and a denoiser must see past it to tell noise from edges.
    ``norm = "instance"`` (instance norm without affine parameters after each hidden convolution) exists only to
    ablate the issue's first suspected cause; no bundled model uses it.
    """

    in_channels: int = 1
    filters: int = 32
    layers: int = 8
    dilations: tuple[int, ...] = (1, 2, 3, 4, 3, 2, 1, 1)
    head_init_std: float = 1e-3
    norm: Literal["none", "instance"] = "none"
    noise_conditioning: bool = False

    @property
    def input_channels(self) -> int:
        """The image's channels, and one more for the noise-level map when conditioned."""
        return self.in_channels + int(self.noise_conditioning)

    def __post_init__(self) -> None:
        if self.layers < 2:
            raise ValueError("a residual CNN needs at least 2 layers")
        if len(self.dilations) != self.layers:
            raise ValueError(f"dilations {self.dilations} must give one value per layer ({self.layers})")
        if self.norm not in ("none", "instance"):
            raise ValueError(f"unknown norm {self.norm!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**arch_dict("residual_cnn", self), "dilations": list(self.dilations)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResidualCNNConfig:
        data = {k: v for k, v in data.items() if k != "type"}
        if "dilations" in data:
            data["dilations"] = tuple(int(d) for d in data["dilations"])
        return cls(**data)


class ResidualCNN(nn.Module):
    """x + f(x), f a stack of 3×3 convolutions without any normalisation layer.

    Why no normalisation: instance norm rescales each patch's features to unit variance, so the size of the
    correction cannot follow the noise level of the input; a denoiser must remove more where there is more noise.
    Without it the network is also exactly translation-equivariant, so tiles agree at their seams.
    Why a small random last layer (N(0, head_init_std)) rather than zeros: a zero head starts exactly at the
    identity, the sharpest minimum of the cycle L1, and the head's gradient there is the only one that is not zero.
    Output is clamped to the model's [−1, 1] window.
    """

    def __init__(self, config: ResidualCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or ResidualCNNConfig()
        c, f = self.config.in_channels, self.config.filters
        layers: list[nn.Module] = []
        for i, d in enumerate(self.config.dilations):
            last = i == self.config.layers - 1
            c_in = self.config.input_channels if i == 0 else f
            layers.append(nn.Conv2d(c_in, c if last else f, 3, padding=d, dilation=d, padding_mode="reflect"))
            if not last:
                if self.config.norm == "instance":
                    layers.append(nn.InstanceNorm2d(f))
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation for the ReLU layers, a near-zero head (see the class docstring)."""
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        for conv in convs[:-1]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(convs[-1].weight, 0.0, self.config.head_init_std)
        nn.init.zeros_(convs[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (image_channels(x, self.config) + self.body(x)).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class ResidualUNetConfig:
    """A residual U-Net: ``filters`` at full resolution, 2× at ½, 4× at ¼ with ``bottleneck_layers`` dilated layers."""

    in_channels: int = 1
    filters: int = 32
    bottleneck_layers: int = 4
    head_init_std: float = 1e-3
    noise_conditioning: bool = False

    def __post_init__(self) -> None:
        if self.bottleneck_layers < 0:
            raise ValueError("bottleneck_layers must be >= 0")

    @property
    def input_channels(self) -> int:
        """The image's channels, and one more for the noise-level map when conditioned."""
        return self.in_channels + int(self.noise_conditioning)

    def to_dict(self) -> dict[str, Any]:
        return arch_dict("residual_unet", self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResidualUNetConfig:
        return cls(**{k: v for k, v in data.items() if k != "type"})


def arch_dict(kind: str, config: Any) -> dict[str, Any]:
    """A config as metadata: ``noise_conditioning`` only when True, so that models without it keep their metadata
    (and the derived UIDs and digests computed from it) exactly as before the option existed."""
    data = {"type": kind, **asdict(config)}
    if not data.get("noise_conditioning"):
        data.pop("noise_conditioning", None)
    return data


def image_channels(x: torch.Tensor, config: Any) -> torch.Tensor:
    """The input's image channels, to which a residual network adds its correction (``x`` itself unconditioned)."""
    return x[:, : config.in_channels] if config.noise_conditioning else x


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, padding_mode="reflect")


class ResidualUNet(nn.Module):
    """x + f(x), f a two-level U-Net without normalisation (nearest resize + 3×3 convolution to go up).

    Why: FBP noise at quarter dose is correlated over several pixels and the phantoms' structures are large, so a
    denoiser gains from seeing far (99 px with 4 bottleneck layers, 16 px more per layer; the residual CNN: 35–55
    px), and the ½ and ¼ resolution levels buy that reach for less arithmetic per pixel. No normalisation and a
    small random head for the reasons given in ``ResidualCNN``. Tile sides must be multiples of 4
    (``DOWNSAMPLE_FACTOR``), as for the ResNet.
    """

    def __init__(self, config: ResidualUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ResidualUNetConfig()
        c, f = self.config.in_channels, self.config.filters
        relu = nn.ReLU
        self.enc0 = nn.Sequential(_conv(self.config.input_channels, f), relu(), _conv(f, f), relu())
        self.enc1 = nn.Sequential(_conv(f, 2 * f, stride=2), relu(), _conv(2 * f, 2 * f), relu())
        bottleneck: list[nn.Module] = [_conv(2 * f, 4 * f, stride=2), relu()]
        for _ in range(self.config.bottleneck_layers):
            bottleneck += [_conv(4 * f, 4 * f, dilation=2), relu()]
        self.enc2 = nn.Sequential(*bottleneck)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv(4 * f, 2 * f), relu())
        self.dec1 = nn.Sequential(_conv(4 * f, 2 * f), relu(), _conv(2 * f, 2 * f), relu())
        self.up0 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv(2 * f, f), relu())
        self.dec0 = nn.Sequential(_conv(2 * f, f), relu())
        self.head = _conv(f, c)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation for the ReLU layers, a near-zero head (see ``ResidualCNN``)."""
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d) and conv is not self.head:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.head.weight, 0.0, self.config.head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % DOWNSAMPLE_FACTOR or x.shape[-2] % DOWNSAMPLE_FACTOR:
            raise ValueError(f"input {tuple(x.shape[-2:])} must be padded to a multiple of {DOWNSAMPLE_FACTOR}")
        full = self.enc0(x)
        half = self.enc1(full)
        half = self.dec1(torch.cat([self.up1(self.enc2(half)), half], 1))
        full = self.dec0(torch.cat([self.up0(half), full], 1))
        return (image_channels(x, self.config) + self.head(full)).clamp(-1.0, 1.0)


Generator = ResnetGenerator | ResidualCNN | ResidualUNet
ArchConfig = GeneratorConfig | ResidualCNNConfig | ResidualUNetConfig


def generator_config(arch: dict[str, Any]) -> ArchConfig:
    """The architecture config named by a metadata/checkpoint dict's ``type``."""
    kind = arch.get("type", "resnet_generator")
    if kind == "residual_cnn":
        return ResidualCNNConfig.from_dict(arch)
    if kind == "residual_unet":
        return ResidualUNetConfig.from_dict(arch)
    return GeneratorConfig.from_dict(arch)


def make_generator(config: ArchConfig) -> Generator:
    if isinstance(config, ResidualCNNConfig):
        return ResidualCNN(config)
    if isinstance(config, ResidualUNetConfig):
        return ResidualUNet(config)
    return ResnetGenerator(config)


def build_generator(arch: dict[str, Any]) -> Generator:
    """Rebuild the generator from the architecture section of a model's metadata."""
    return make_generator(generator_config(arch))
