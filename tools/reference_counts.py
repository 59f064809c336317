#!/usr/bin/env python3
"""Independent reference counts for the DenseNet shape planner.

For each preset this builds the network in PyTorch and prints:

* ``params``   -- trainable parameters (every conv/BN/linear weight and bias),
* ``bn_stats`` -- BatchNorm running-statistic elements: running_mean + running_var
                  (``num_batches_tracked`` is *not* counted),
* MACs per image (batch 1), counted with forward hooks, under several definitions:

  - ``conv``        : convolutions only, output elements x c_in/groups x kh x kw
  - ``conv+fc``     : ``conv`` plus the classifier, in_features x out_features
  - ``+bn``         : ``conv+fc`` plus one op per BatchNorm output element
  - ``+bn+relu``    : ... plus one per ReLU output element (incl. the functional
                      ReLU before the global pool in torchvision's forward)
  - ``all``         : ... plus pooling (max/avg pool: output elements x kh x kw;
                      global average pool: input elements)

ImageNet presets use ``torchvision.models.DenseNet`` (224x224, 1000 classes).
CIFAR presets are built the way Huang et al. (2017, Table 2) describe them
(32x32, 10 classes): see ``CifarDenseNet`` below.

Usage:  python tools/reference_counts.py            # prints and writes
                                                     # tools/reference_counts.txt
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import DenseNet
from torchvision.models.densenet import _DenseLayer, _Transition


# --------------------------------------------------------------------------------------
# CIFAR DenseNet, the paper's way.
#
# Names follow torchvision (features.conv0, features.denseblock{i}.denselayer{j}.{norm1,
# conv1,norm2,conv2}, features.transition{i}.{norm,conv}, features.norm5, classifier)
# minus norm0/relu0/pool0, with conv0 a 3x3 stride-1 pad-1 convolution.
# --------------------------------------------------------------------------------------
class PlainDenseLayer(nn.Module):
    """Dense layer without bottleneck: BN -> ReLU -> conv3x3(k) (pad 1, no bias).

    Its modules are named norm1 / relu1 / conv1 (there is no second BN/conv).
    """

    def __init__(self, num_input_features: int, growth_rate: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(
            num_input_features, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(x)))


class DenseBlock(nn.ModuleDict):
    """n dense layers; layer j sees c_in + (j-1)*k channels (concatenation of all
    earlier outputs). With ``bottleneck`` the layer is torchvision's ``_DenseLayer``
    (BN-ReLU-conv1x1(bn_size*k)-BN-ReLU-conv3x3(k)); otherwise ``PlainDenseLayer``."""

    def __init__(
        self, num_layers: int, num_input_features: int, growth_rate: int,
        bottleneck: bool, bn_size: int = 4,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            c = num_input_features + i * growth_rate
            if bottleneck:
                layer = _DenseLayer(c, growth_rate, bn_size, drop_rate=0.0,
                                    memory_efficient=False)
                # torchvision's ReLUs are inplace; harmless here, but keep hooks honest.
                layer.relu1.inplace = False
                layer.relu2.inplace = False
            else:
                layer = PlainDenseLayer(c, growth_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for _name, layer in self.items():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class CifarDenseNet(nn.Module):
    """DenseNet / DenseNet-BC for 32x32 inputs (Huang et al. 2017, Section 3 / Table 2).

    stem: conv3x3(stem_ch, stride 1, pad 1, no bias) -- no BN/ReLU/pool after it;
    3 dense blocks of ``n`` layers; transitions BN-ReLU-conv1x1(floor(theta*C))-avgpool2;
    head: BN-ReLU-global average pool-linear (with bias). Returns logits.
    """

    def __init__(
        self, depth: int, growth_rate: int, bottleneck: bool, theta: float,
        num_classes: int = 10, stem_channels: int | None = None, bn_size: int = 4,
    ) -> None:
        super().__init__()
        per_layer = 6 if bottleneck else 3
        if (depth - 4) % per_layer != 0:
            raise ValueError(f"depth {depth} is not 4 + {per_layer}n")
        n = (depth - 4) // per_layer
        if stem_channels is None:
            stem_channels = 2 * growth_rate if (bottleneck and theta < 1) else 16
        self.config = dict(depth=depth, growth_rate=growth_rate, bottleneck=bottleneck,
                           theta=theta, n=n, stem_channels=stem_channels,
                           num_classes=num_classes)

        feats: "OrderedDict[str, nn.Module]" = OrderedDict()
        feats["conv0"] = nn.Conv2d(3, stem_channels, kernel_size=3, stride=1, padding=1,
                                   bias=False)
        c = stem_channels
        for i in range(3):
            feats[f"denseblock{i + 1}"] = DenseBlock(n, c, growth_rate, bottleneck, bn_size)
            c += n * growth_rate
            if i != 2:
                out = int(theta * c)  # floor for positive values
                feats[f"transition{i + 1}"] = _Transition(c, out)
                c = out
        feats["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(feats)
        self.classifier = nn.Linear(c, num_classes)
        self.num_features = c

        # Same initialisation as torchvision's DenseNet.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=False)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


# --------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_bn_stats(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += m.running_mean.numel() + m.running_var.numel()
    return total


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def count_macs(model: nn.Module, input_hw: int) -> dict:
    """Per-image op counts by category, via forward hooks on a batch-1 forward pass.

    The final ReLU and global average pool in both forwards here (torchvision's and
    CifarDenseNet's) are functional calls, so they are counted from the input to the
    classifier / the output of the last module of ``features``.
    """
    counts = dict(conv=0, fc=0, bn=0, relu=0, pool=0, gap=0)
    hooks = []
    last_features_out = {}

    def conv_hook(m: nn.Conv2d, inp, out):
        kh, kw = _pair(m.kernel_size)
        counts["conv"] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def fc_hook(m: nn.Linear, inp, out):
        counts["fc"] += m.in_features * m.out_features * (out.numel() // m.out_features)

    def bn_hook(m, inp, out):
        counts["bn"] += out.numel()

    def relu_hook(m, inp, out):
        counts["relu"] += out.numel()

    def pool_hook(m, inp, out):
        kh, kw = _pair(m.kernel_size)
        counts["pool"] += out.numel() * kh * kw

    def features_hook(m, inp, out):
        last_features_out["shape"] = tuple(out.shape)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(fc_hook))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_hook(bn_hook))
        elif isinstance(m, nn.ReLU):
            hooks.append(m.register_forward_hook(relu_hook))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            hooks.append(m.register_forward_hook(pool_hook))
    hooks.append(model.features.register_forward_hook(features_hook))

    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, input_hw, input_hw))
    for h in hooks:
        h.remove()

    n, c, h, w = last_features_out["shape"]
    # functional F.relu + F.adaptive_avg_pool2d after features
    counts["relu"] += c * h * w
    counts["gap"] += c * h * w
    counts["final_hw"] = (h, w)
    counts["final_c"] = c
    return counts


# --------------------------------------------------------------------------------------
# Presets and expected values
# --------------------------------------------------------------------------------------
IMAGENET = [
    # name, k, blocks, init
    ("densenet121", 32, (6, 12, 24, 16), 64),
    ("densenet161", 48, (6, 12, 36, 24), 96),
    ("densenet169", 32, (6, 12, 32, 32), 64),
    ("densenet201", 32, (6, 12, 48, 32), 64),
    ("densenet264", 32, (6, 12, 64, 48), 64),
]

# From /work/shared/reference/densenet-facts.md (measured with torchvision 0.29).
FACTS = {
    "densenet121": (7_978_856, 83_648, 2_834_161_664),
    "densenet161": (28_681_000, 219_936, 7_727_907_072),
    "densenet169": (14_149_480, 158_400, 3_359_843_328),
    "densenet201": (20_013_928, 229_056, 4_291_365_888),
}

CIFAR = [
    # name, L, k, bottleneck, theta, paper params (millions, 10 classes)
    ("cifar_densenet_L40_k12", 40, 12, False, 1.0, 1.0),
    ("cifar_densenet_L100_k12", 100, 12, False, 1.0, 7.0),
    ("cifar_densenet_L100_k24", 100, 24, False, 1.0, 27.2),
    ("cifar_densenet_bc_L100_k12", 100, 12, True, 0.5, 0.8),
    ("cifar_densenet_bc_L250_k24", 250, 24, True, 0.5, 15.3),
    ("cifar_densenet_bc_L190_k40", 190, 40, True, 0.5, 25.6),
]


def build_imagenet(k, blocks, init, num_classes=1000):
    return DenseNet(growth_rate=k, block_config=blocks, num_init_features=init,
                    bn_size=4, num_classes=num_classes)


MAC_DEFS = ["conv", "conv+fc", "+bn", "+bn+relu", "all"]


def mac_variants(c: dict) -> dict:
    v = {}
    v["conv"] = c["conv"]
    v["conv+fc"] = v["conv"] + c["fc"]
    v["+bn"] = v["conv+fc"] + c["bn"]
    v["+bn+relu"] = v["+bn"] + c["relu"]
    v["all"] = v["+bn+relu"] + c["pool"] + c["gap"]
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "reference_counts.txt"),
                    help="where to write the table (default: tools/reference_counts.txt)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    lines = []
    failures = []

    def emit(s=""):
        print(s)
        lines.append(s)

    import torchvision
    emit("# DenseNet reference counts (generated by tools/reference_counts.py; "
         f"torch {torch.__version__}, torchvision {torchvision.__version__})")
    emit("# params = trainable parameters; bn_stats = BN running_mean + running_var "
         "elements (no num_batches_tracked)")
    emit("# MACs per image (batch 1). conv = out_elems * c_in/groups * kh * kw; "
         "fc = in * out;")
    emit("#   +bn adds 1/BN output element, +relu 1/ReLU output element (incl. the "
         "functional one before the pool),")
    emit("#   all adds pooling (max/avg: out_elems * kh * kw; global avg: in_elems).")
    emit()

    hdr = (f"{'model':<28} {'input':>7} {'params':>12} {'bn_stats':>9} "
           f"{'MACs conv+fc':>15} {'conv only':>15} {'+bn':>15} {'+bn+relu':>15} "
           f"{'all':>15}")
    emit(hdr)
    emit("-" * len(hdr))

    results = {}
    for name, k, blocks, init in IMAGENET:
        m = build_imagenet(k, blocks, init)
        p, b = count_params(m), count_bn_stats(m)
        c = count_macs(m, 224)
        v = mac_variants(c)
        results[name] = (p, b, v, c)
        emit(f"{name:<28} {'224x224':>7} {p:>12,} {b:>9,} {v['conv+fc']:>15,} "
             f"{v['conv']:>15,} {v['+bn']:>15,} {v['+bn+relu']:>15,} {v['all']:>15,}")
        del m

    for name, L, k, bott, theta, paper in CIFAR:
        m = CifarDenseNet(L, k, bott, theta, num_classes=10)
        p, b = count_params(m), count_bn_stats(m)
        c = count_macs(m, 32)
        v = mac_variants(c)
        results[name] = (p, b, v, c)
        emit(f"{name:<28} {'32x32':>7} {p:>12,} {b:>9,} {v['conv+fc']:>15,} "
             f"{v['conv']:>15,} {v['+bn']:>15,} {v['+bn+relu']:>15,} {v['all']:>15,}")
        del m

    # The three models behind tests/fixtures/ (see tools/make_fixtures.py).
    fixture_models = [
        ("fixture:torchvision_small", 64,
         build_imagenet(8, (2, 3, 4, 2), 16, num_classes=10)),
        ("fixture:cifar_bc", 32, CifarDenseNet(40, 12, True, 0.5, num_classes=10)),
        ("fixture:keras_small", 64,  # same structure as keras DenseNet(blocks=[1,2,2,1])
         build_imagenet(32, (1, 2, 2, 1), 64, num_classes=10)),
    ]
    for name, hw, m in fixture_models:
        p, b = count_params(m), count_bn_stats(m)
        c = count_macs(m, hw)
        v = mac_variants(c)
        results[name] = (p, b, v, c)
        emit(f"{name:<28} {f'{hw}x{hw}':>7} {p:>12,} {b:>9,} {v['conv+fc']:>15,} "
             f"{v['conv']:>15,} {v['+bn']:>15,} {v['+bn+relu']:>15,} {v['all']:>15,}")

    emit()
    emit("# Checks against densenet-facts.md (torchvision 0.29 measurements)")
    for name, (fp, fb, fmacs) in FACTS.items():
        p, b, v, _ = results[name]
        matching = [d for d in MAC_DEFS if v[d] == fmacs]
        ok_p, ok_b = p == fp, b == fb
        emit(f"{name:<12} params {p:,} vs {fp:,} {'OK' if ok_p else 'MISMATCH'}; "
             f"bn_stats {b:,} vs {fb:,} {'OK' if ok_b else 'MISMATCH'}; "
             f"MACs {fmacs:,} matches definition(s): {', '.join(matching) or 'NONE'}")
        if not (ok_p and ok_b and matching):
            failures.append(name)
        if matching and "conv+fc" not in matching:
            failures.append(f"{name}: facts MACs are not conv+fc")

    emit()
    emit("# CIFAR nets vs Huang et al. 2017 Table 2 (params in millions, 10 classes)")
    for name, L, k, bott, theta, paper in CIFAR:
        p, b, v, c = results[name]
        cfg = (f"L={L} k={k} {'BC' if bott else 'plain'} theta={theta} "
               f"n={(L - 4) // (6 if bott else 3)} stem={2 * k if bott else 16} "
               f"final_c={c['final_c']} final_hw={c['final_hw'][0]}x{c['final_hw'][1]}")
        rounded = round(p / 1e6, 1)
        ok = abs(rounded - paper) < 1e-9
        emit(f"{name:<28} {p / 1e6:8.4f}M -> {rounded:.1f}M vs paper {paper:.1f}M "
             f"{'OK' if ok else 'MISMATCH'}   ({cfg})")
        if not ok:
            failures.append(name)

    emit()
    emit("# Per-category op counts (per image)")
    emit(f"{'model':<28} {'conv':>15} {'fc':>10} {'bn':>12} {'relu':>12} {'pool':>11} "
         f"{'gap':>7}")
    for name in results:
        c = results[name][3]
        emit(f"{name:<28} {c['conv']:>15,} {c['fc']:>10,} {c['bn']:>12,} {c['relu']:>12,} "
             f"{c['pool']:>11,} {c['gap']:>7,}")

    emit()
    emit("# RESULT: " + ("all checks passed" if not failures else
                         "FAILED: " + "; ".join(failures)))

    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
